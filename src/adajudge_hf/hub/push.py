"""Upload a judge checkpoint folder, its generated card and its evaluations in one commit of the regular client."""

import json
import logging
from importlib.resources import files
from pathlib import Path

from huggingface_hub import CommitInfo, CommitOperationAdd, HfApi, get_token

from .. import __version__
from ..checkpoint import ADAPTER_CONFIG_FILE, adapter_config_for_repo
from ..evaluation.provenance import WEIGHTS_SUFFIX
from ..modeling import REMOTE_CODE_FILES
from .cards import checkpoint_card
from .folders import REPO_ID, TRAINER_STATE, Evaluation, check_checkpoint, check_evaluations_match, read_evaluations


logger = logging.getLogger(__name__)


def _upload_operations(folder: Path, form: str, evaluations: list[Evaluation]) -> list[CommitOperationAdd]:
    """Every file of the checkpoint (README.md excepted: the card replaces it; a `checkpoint-N/`'s Trainer state left
    out) and of the evaluations."""
    paths = {
        path.relative_to(folder).as_posix(): path
        for path in sorted(folder.rglob("*"))
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    }
    paths = {name: path for name, path in paths.items() if not TRAINER_STATE.fullmatch(name)}
    paths.pop("README.md", None)
    if form == "full":  # a full checkpoint saved by `save_pretrained` has them; add them for any other
        code = files("adajudge_hf.modeling")
        for name in REMOTE_CODE_FILES:
            paths.setdefault(name, code / name)
    for evaluation in evaluations:
        paths[f"evaluation/{evaluation.folder.name}/metrics.json"] = evaluation.folder / "metrics.json"
        if evaluation.routing_image is not None:
            paths[f"evaluation/{evaluation.folder.name}/routing.png"] = evaluation.routing_image
    return [
        CommitOperationAdd(
            path_in_repo=name, path_or_fileobj=str(path) if isinstance(path, Path) else path.read_bytes()
        )
        for name, path in paths.items()
    ]


def push_judge(
    checkpoint_dir: str | Path,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    eval_dir: str | Path | list[str | Path] | None = None,
    base_model: str | None = None,
    datasets: list[str] | None = None,
    license: str | None = None,
    force: bool = False,
) -> CommitInfo:
    """Push a judge checkpoint folder (any `save_judge` form) to `repo_id` with its generated model card.

    Uploads every file of the folder (weights, config, tokenizer; the remote-code files for the full form), the card
    rendered by `render_card` (with `eval_dir`'s measured numbers, routing report and plot) and the evaluations'
    `metrics.json`. `revision` is a branch, created from `main` when new. The token defaults to `HF_TOKEN` or the
    cached login. Everything is checked before the first request, so bad input creates nothing on the Hub; that
    includes evaluations of other weights than the checkpoint's (`check_evaluations_match`), unless `force`.
    Returns the `CommitInfo` of the last commit.
    """
    folder = Path(checkpoint_dir)
    if not REPO_ID.fullmatch(repo_id):
        raise ValueError(f"REPO_ID must look like 'org/name' (e.g. org/adajudge-qwen3-8b), got {repo_id!r}.")
    form, evaluations = check_checkpoint(folder, base_model=base_model), read_evaluations(eval_dir)
    operations = _upload_operations(folder, form, evaluations)
    replaced = {}
    if form == "adapter":  # the Auto classes must reach the judge, not the bare backbone, from this repo id
        replaced[ADAPTER_CONFIG_FILE] = adapter_config_for_repo(folder, repo_id)
    if form != "full" and base_model is not None:  # trained on a local copy: the Hub copy loads the Hub backbone
        config = json.loads((folder / "config.json").read_text())
        config["base_model_name_or_path"] = base_model
        replaced["config.json"] = (json.dumps(config, indent=2, sort_keys=True) + "\n").encode()
    operations = [operation for operation in operations if operation.path_in_repo not in replaced]
    operations += [CommitOperationAdd(name, content) for name, content in replaced.items()]
    # The sha256 that the upload needs anyway (computed once, reused by huggingface_hub) identifies the weights.
    weight_hashes = {
        operation.path_in_repo: operation.upload_info.sha256.hex()
        for operation in operations
        if operation.path_in_repo.endswith(WEIGHTS_SUFFIX) and "/" not in operation.path_in_repo
    }
    check_evaluations_match(evaluations, folder, weight_hashes, force=force)
    card_kwargs = dict(repo_id=repo_id, base_model=base_model, datasets=datasets, license=license)
    card = checkpoint_card(folder, form, evaluations, code_revision=None, **card_kwargs)
    token = token or get_token()
    if not token:
        raise ValueError(
            "No Hugging Face token found, so nothing was sent. Pass `token=` (`--token`), set the HF_TOKEN "
            "environment variable, or log in once with `hf auth login`; the token needs write access to "
            f"{repo_id.split('/')[0]}."
        )
    if license is None:
        logger.warning("The card has no `license`; pass `license=` (derived weights keep the backbone's license).")

    api = HfApi(token=token, library_name="adajudge-hf", library_version=__version__)
    api.create_repo(repo_id, private=private, exist_ok=True)
    if revision not in (None, "main"):
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    operations.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=str(card).encode()))
    info = api.create_commit(
        repo_id,
        operations,
        commit_message=commit_message or f"Upload AdaJudge judge ({form} checkpoint)",
        revision=revision,
    )
    if form == "full":
        pinned = checkpoint_card(folder, form, evaluations, code_revision=info.oid, **card_kwargs)
        info = api.create_commit(
            repo_id,
            [CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=str(pinned).encode())],
            commit_message="Pin the model card's remote-code snippet to the uploaded code",
            revision=revision,
            parent_commit=info.oid,
        )
    logger.info(f"Pushed {folder} ({form} checkpoint) to {info.repo_url}")
    return info
