"""What gets published, checked locally: the judge checkpoint folder and the `adajudge evaluate` output folders."""

import json
import logging
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from safetensors import safe_open

from ..checkpoint import detect_judge_form
from ..evaluation.benchmarks import BENCHMARKS, get_benchmark
from ..evaluation.provenance import weights_fingerprint
from ..lora import HEAD_MODULE
from ..modeling import AdaJudgeConfig


logger = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
TRAINER_STATE = re.compile(
    r"(optimizer|scheduler|scaler)\.pt|rng_state(_\d+)?\.pth|training_args\.bin|trainer_state\.json"
)
"""Trainer's resume state in a `checkpoint-N/` folder (a judge too): never uploaded, never loaded."""
REPO_ID = re.compile(r"[\w.-]+/[\w.-]+")
"""A Hub repo id: `org/name`."""


def is_repo_id(name: str | None) -> bool:
    """Whether `name` is a Hub repo id and not a local path."""
    return bool(name) and REPO_ID.fullmatch(name) is not None and not Path(name).exists()


def _tensor_names(folder: Path) -> set[str]:
    """Names of the tensors of a full checkpoint, read from the safetensors headers (no weights are loaded)."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        missing = sorted({shard for shard in weight_map.values() if not (folder / shard).is_file()})
        if missing:
            raise ValueError(f"{folder} lacks the shard(s) {', '.join(missing)} listed in {index.name}.")
        return set(weight_map)
    with safe_open(folder / "model.safetensors", framework="pt") as weights:
        return set(weights.keys())


def check_checkpoint(checkpoint_dir: str | Path, base_model: str | None = None) -> str:
    """Check that a folder is a complete judge that can be published; return its form ("full", "adapter", "heads").

    Refuses pickle files (they run code when loaded), a missing heads file or head tensors, a missing tokenizer, and
    adapter / heads checkpoints whose backbone is a local folder, which nobody else could fetch, unless `base_model`
    names its Hub id (the pushed config.json then records it).
    """
    folder = Path(checkpoint_dir)
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder; pass the output folder of `save_judge`.")
    pickles = sorted(
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if p.suffix in PICKLE_SUFFIXES and not TRAINER_STATE.fullmatch(p.relative_to(folder).as_posix())
    )
    if pickles:
        raise ValueError(
            f"{folder} holds pickle files ({', '.join(pickles)}), which run arbitrary code when loaded; the Hub copy "
            "of a judge must be safetensors only. Push the folder `adajudge train` or `save_judge` wrote."
        )
    form = detect_judge_form(folder)
    if form == "full" and not any(name.startswith(f"{HEAD_MODULE}.") for name in _tensor_names(folder)):
        raise ValueError(
            f"The weights in {folder} have no `{HEAD_MODULE}.*` tensors: this is a backbone, not a trained judge. "
            "Push the judge that `adajudge train` (or `save_judge`) saved."
        )
    if not (folder / "tokenizer_config.json").is_file():
        raise ValueError(
            f"{folder} has no tokenizer (tokenizer_config.json). Copy the backbone's tokenizer files into it "
            "(`adajudge train` saves them; in Python `save_judge(..., tokenizer=tokenizer)`)."
        )
    if base_model is not None and not is_repo_id(base_model):
        raise ValueError(f"--base-model must be the Hub repo id of the backbone ('org/name'), got {base_model!r}.")
    if form != "full" and base_model is None:
        base = AdaJudgeConfig.get_config_dict(str(folder))[0].get("base_model_name_or_path")
        if not is_repo_id(base):
            raise ValueError(
                f"{folder}/config.json records the backbone as {base!r}, which is not a Hub repo id, so nobody else "
                "could load this judge. Name the backbone's Hub id with --base-model <org>/<backbone> (the pushed "
                "config.json records it; `base_model=` in Python)."
            )
    return form


@dataclass
class Evaluation:
    """One `adajudge evaluate` output folder (see `adajudge_hf.evaluation.report` for the files)."""

    folder: Path
    report: dict
    routing_markdown: str | None
    routing_image: Path | None

    @property
    def benchmark(self) -> str:
        return self.report["benchmark"]

    @property
    def metrics(self) -> dict:
        return self.report["metrics"]

    @property
    def command(self) -> str:
        """The command line that wrote the folder: recorded in `metrics.json`, else rebuilt as `adajudge evaluate`."""
        if self.report.get("command"):
            return self.report["command"]
        model = self.report.get("model") or "<model>"  # None when the scored model had no name or path
        args = ["adajudge", "evaluate", "--model", str(model), "--benchmark", self.benchmark]
        for key in ("data", "split"):
            if self.report.get(key):
                args += [f"--{key}", str(self.report[key])]
        return shlex.join(args)

    @property
    def title(self) -> str:
        benchmark = get_benchmark(self.benchmark)
        data = self.report.get("split") or (Path(self.report["data"]).name if self.report.get("data") else None)
        return f"{benchmark.title} ({data})" if data and benchmark.data_in_title else benchmark.title


def read_evaluation(folder: str | Path) -> Evaluation:
    """Read an evaluation output folder: `metrics.json`, and `routing.md` / `routing.png` when present."""
    folder = Path(folder)
    path = folder / "metrics.json"
    if not path.is_file():
        raise ValueError(
            f"{folder} has no metrics.json; pass the --output-dir of `adajudge evaluate` (or a folder of such folders)."
        )
    report = json.loads(path.read_text())
    if report.get("benchmark") not in BENCHMARKS or "metrics" not in report:
        raise ValueError(f"{path} is not an `adajudge evaluate` report (no known `benchmark` and `metrics`).")
    routing = folder / "routing.md"
    image = folder / "routing.png"
    return Evaluation(
        folder=folder,
        report=report,
        routing_markdown=routing.read_text() if routing.is_file() else None,
        routing_image=image if routing.is_file() and image.is_file() else None,
    )


def read_evaluations(eval_dirs: str | Path | list[str | Path] | None) -> list[Evaluation]:
    """Every evaluation in `eval_dirs`: each is an evaluation output folder or a folder of them (e.g. `eval/`)."""
    if eval_dirs is None:
        return []
    folders = []
    for folder in [eval_dirs] if isinstance(eval_dirs, (str, Path)) else eval_dirs:
        folder = Path(folder)
        children = sorted(child.parent for child in folder.glob("*/metrics.json"))
        folders += [folder] if (folder / "metrics.json").is_file() or not children else children
    order = list(BENCHMARKS)
    evaluations = sorted(map(read_evaluation, folders), key=lambda e: (order.index(e.benchmark), e.folder.name))
    names = [evaluation.folder.name for evaluation in evaluations]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(
            f"Several evaluation folders are named {', '.join(duplicates)}; their files would collide in the repo's "
            "evaluation/ folder. Give each evaluation its own folder name."
        )
    return evaluations


def check_evaluations_match(
    evaluations: list[Evaluation], checkpoint_dir: str | Path, weight_hashes: dict[str, str], force: bool = False
) -> None:
    """Refuse evaluations that scored other weights than the checkpoint's, unless `force`.

    `weight_hashes` are the sha256 of the checkpoint's `*.safetensors` files (`provenance.weight_file_hashes`, or the
    hashes huggingface_hub computes for the upload). An evaluation that does not record its judge's fingerprint
    (scored in memory, or by an older version) cannot be checked: a warning says so.
    """
    fingerprint = weights_fingerprint(weight_hashes)
    for evaluation in evaluations:
        judge = evaluation.report.get("judge") or {}
        recorded = judge.get("fingerprint")
        path = evaluation.folder / "metrics.json"
        if recorded == fingerprint:
            continue
        if recorded is None and evaluation.report.get("model") != "length-baseline":
            logger.warning(
                f"{path} does not record which weights it scored (evaluated in memory or by an older adajudge-hf), "
                f"so it cannot be checked against {checkpoint_dir}; `adajudge evaluate --model {checkpoint_dir}` "
                "records them."
            )
            continue
        if force:
            logger.warning(f"{path} scored other weights than {checkpoint_dir}; publishing it anyway (force).")
            continue
        scored = (
            f"{evaluation.report.get('model')} (weights {recorded})" if recorded else evaluation.report.get("model")
        )
        raise ValueError(
            f"{path} holds the scores of {scored}, not of {checkpoint_dir} (weights {fingerprint}), so the card "
            f"would publish another checkpoint's numbers. Evaluate this checkpoint (`adajudge evaluate --model "
            f"{checkpoint_dir} ...`) or pass --force (`force=True`) to publish them anyway."
        )
