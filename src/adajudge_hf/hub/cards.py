"""Model cards: rendered offline from a checkpoint folder and its evaluation folders (or, for the paper's judges, from
the paper's numbers), with metadata checked the way the Hub parses it."""

import json
import logging
import re
from importlib.resources import files
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..checkpoint import ADAPTER_CONFIG_FILE
from ..evaluation.benchmarks import get_benchmark
from ..evaluation.provenance import weight_file_hashes
from ..modeling import REMOTE_CODE_FILES, AdaJudgeConfig
from ..modeling.configuration_adajudge import POOLING_EXPERTS
from .folders import Evaluation, check_checkpoint, check_evaluations_match, is_repo_id, read_evaluations


logger = logging.getLogger(__name__)

PAPER_URL = "https://arxiv.org/abs/2601.08097"
PAPER_RESULTS = {
    "microsoft/Phi-3.5-mini-instruct": {
        "backbone": "Phi-3.5-mini",
        "k": 2,
        "last": (58.0, 55.1),
        "adajudge": (59.8, 59.4),
    },
    "Qwen/Qwen3-4B": {"backbone": "Qwen3-4B", "k": 3, "last": (67.6, 62.3), "adajudge": (70.8, 66.0)},
    "Qwen/Qwen3-8B": {"backbone": "Qwen3-8B", "k": 3, "last": (67.3, 63.1), "adajudge": (71.1, 66.0)},
}
"""Overall accuracy (%) on the `PAPER_BENCHMARKS` reported by the AdaJudge paper, keyed by the backbone's Hub id."""
PAPER_BENCHMARKS = ("rm-bench", "judgebench")
PAPER_REFERENCES = {"Skywork-Reward-Llama-3.1-8B": (70.1, 62.3), "Skywork-Reward-Gemma-2-27B": (70.5, 64.3)}
PAPER_ABLATION = {
    "Qwen/Qwen3-4B": {
        "last-token": (69.2, 37.0, 65.1),
        "mean": (67.4, 34.8, 64.3),
        "attention": (69.5, 38.7, 65.1),
        "AdaJudge": (70.8, 43.7, 66.0),
        "AdaJudge w/o refinement": (69.8, 39.6, 62.6),
    }
}
"""The paper's ablation: (RM-Bench average, RM-Bench hard, JudgeBench) per variant."""
FAMILY = {
    "adajudge-qwen3-8b": {"base_model": "Qwen/Qwen3-8B", "license": "apache-2.0"},
    "adajudge-qwen3-4b": {"base_model": "Qwen/Qwen3-4B", "license": "apache-2.0"},
    "adajudge-phi-3.5-mini": {"base_model": "microsoft/Phi-3.5-mini-instruct", "license": "mit"},
}
"""The paper's judges, whose cards live in `hub_cards/` (licenses are the backbones')."""
FAMILY_DATASETS = ["nvidia/HelpSteer3"]

CARD_TEMPLATE = "adajudge_card.md.jinja"
DEFAULT_NAMESPACE = "org"
_FORM_DESCRIPTIONS = {
    "full": "`model.safetensors` holds the backbone and the heads, and the model's code files let 🤗 Transformers "
    "load it without this package.",
    "adapter": "LoRA adapters (`adapter_model.safetensors`) and the heads (`judge_head.safetensors`); the backbone is "
    "fetched from its own repo when loading.",
    "heads": "the heads only (`judge_head.safetensors`) on a frozen backbone, which is fetched from its own repo when "
    "loading.",
}


def _table(evaluation: Evaluation) -> dict:
    """The Markdown table of one evaluation for the card: header, rows and a note."""
    header, rows, size, note = get_benchmark(evaluation.benchmark).card_table(evaluation.metrics)
    return {
        "title": evaluation.title,
        "command": evaluation.command,
        "fingerprint": (evaluation.report.get("judge") or {}).get("fingerprint"),
        "size": size,
        "header": header,
        "rows": rows,
        "note": note,
    }


def _eval_results(evaluation: Evaluation) -> list[EvalResult]:
    """The `model-index` entries of one evaluation (accuracies in %)."""
    benchmark, report = get_benchmark(evaluation.benchmark), evaluation.report
    dataset_type = benchmark.hub_id
    if dataset_type is None:  # the data itself is the dataset (preference pairs): its repo id, else a slug
        data = report.get("data")
        dataset_type = data if is_repo_id(data) else benchmark.title.lower().replace(" ", "-")
    common = dict(
        task_type="text-classification",
        task_name="Reward modeling",
        dataset_type=dataset_type,
        dataset_name=evaluation.title,
        dataset_split=report.get("split"),
        metric_type="accuracy",
    )
    values = benchmark.card_results(evaluation.metrics)
    return [EvalResult(metric_name=metric, metric_value=round(value, 2), **common) for metric, value in values]


def _paper_eval_results(base_model: str) -> list[EvalResult]:
    """The paper's AdaJudge numbers for `base_model`, attributed to the paper."""
    paper = PAPER_RESULTS[base_model]
    return [
        EvalResult(
            task_type="text-classification",
            task_name="Reward modeling",
            dataset_type=benchmark.hub_id,
            dataset_name=benchmark.title,
            metric_type="accuracy",
            metric_name="Overall accuracy (reported by the paper)",
            metric_value=value,
            source_name="AdaJudge paper (Miao et al., ACL 2026)",
            source_url=PAPER_URL,
        )
        for benchmark, value in zip(map(get_benchmark, PAPER_BENCHMARKS), paper["adajudge"])
    ]


def _paper_context(base_model: str | None) -> dict | None:
    if base_model not in PAPER_RESULTS:
        return None
    paper = PAPER_RESULTS[base_model]
    backbone = paper["backbone"]
    rows = [
        [f"{backbone}, last-token reward model", *paper["last"]],
        [f"{backbone}, AdaJudge (K = {paper['k']})", *paper["adajudge"]],
    ]
    rows += [[f"{name} (reference)", *values] for name, values in PAPER_REFERENCES.items()]
    return {"backbone": backbone, "rows": rows, "ablation": PAPER_ABLATION.get(base_model)}


def _recipe(
    config: AdaJudgeConfig, base_model: str | None, finetuning: str, datasets: list[str] | None, sizes: bool = True
) -> list[str]:
    """The training recipe, as recorded in the judge's config.json (and adapter_config.json).

    `sizes=False` leaves out the widths that depend on the backbone's config, for cards written without one.
    """
    text = config.text_config
    backbone = f"[{base_model}](https://huggingface.co/{base_model})" if base_model else f"`{text.model_type}`"
    if sizes:
        backbone += f" (hidden size {text.hidden_size}, {text.num_hidden_layers} layers)"
    lines = [f"Backbone: {backbone}. {finetuning}"]
    k = config.num_refinement_blocks
    if k:
        candidates = ("H(0), " if config.depth_router_include_input else "") + f"H(1)..H({k})"
        block = (
            f"{config.refinement_num_heads} heads, SwiGLU width {config.refinement_intermediate_size}"
            if sizes
            else "SwiGLU width 2 × the hidden size"
        )
        lines.append(
            f"Stage I: {k} refinement block{'s' if k > 1 else ''} ({config.refinement_attention} self-attention, "
            f"{block}), mixed by a depth router over {candidates}."
        )
    else:
        lines.append('Stage I: none (K = 0, the paper\'s "w/o refinement" ablation).')
    head = f"{'MLP' if config.score_head == 'mlp' else 'linear'} score head of width {config.head_hidden_size}"
    if config.pooling == "adaptive":
        lines.append(
            f"Stage II: pooling experts {', '.join(POOLING_EXPERTS)} (attention pooling over "
            f"{'all' if config.attention_pooling_scope == 'all' else 'response'} tokens), each with its own {head}; a "
            f"router conditioned on the prompt mixes their scores (temperature {config.router_temperature})."
        )
    else:
        lines.append(f"Stage II: the static `{config.pooling}` pooling expert with its {head} (a baseline).")
    if config.focal_gamma == 0 and config.entropy_floor_coef == 0:
        objective = f"plain Bradley-Terry loss, p = σ((r⁺ − r⁻) / {config.bt_temperature})"
    else:
        objective = (
            f"focal Bradley-Terry loss −(1 − p)^{config.focal_gamma} · log p with p = σ((r⁺ − r⁻) / "
            f"{config.bt_temperature}), plus {config.entropy_floor_coef} · max(0, {config.entropy_floor} − H(π))², "
            "an entropy floor on the routing weights"
        )
    lines.append(f"Objective: {objective}.")
    if datasets:
        links = ", ".join(f"[{name}](https://huggingface.co/datasets/{name})" for name in datasets)
        lines.append(f"Preference data: {links}.")
    return lines


def _finetuning(folder: Path, form: str) -> str:
    if form == "heads":
        return "The backbone was frozen; only the heads were trained."
    if form == "full":
        return "Any LoRA adapters are merged into the backbone weights; the heads were trained in full."
    lora = json.loads((folder / ADAPTER_CONFIG_FILE).read_text())
    targets = lora["target_modules"]
    targets = targets if isinstance(targets, str) else ", ".join(sorted(targets))
    return (
        f"LoRA on the backbone (r = {lora['r']}, alpha = {lora['lora_alpha']}, dropout = {lora['lora_dropout']}, "
        f"targets `{targets}`); the heads were trained in full."
    )


def _render(
    *,
    config: AdaJudgeConfig,
    form: str,
    repo_id: str,
    base_model: str | None,
    datasets: list[str] | None,
    license: str | None,
    finetuning: str,
    evaluations: list[Evaluation],
    eval_results: list[EvalResult],
    code_revision: str | None,
    status: str | None = None,
    sizes: bool = True,
) -> ModelCard:
    model_name = repo_id.split("/")[-1]
    tags = ["reward-model", "adajudge", "trl"]
    tags += {"full": ["custom_code"], "adapter": ["peft", "lora"], "heads": []}[form]
    card_data = ModelCardData(
        base_model=base_model,
        datasets=datasets or None,
        license=license,
        library_name="transformers",
        pipeline_tag="text-classification",
        tags=tags,
        model_name=model_name,
        eval_results=eval_results or None,
    )
    routing = [
        {
            "markdown": re.sub(r"^(#+) ", r"##\1 ", evaluation.routing_markdown.strip(), flags=re.MULTILINE),
            "alt": f"Mean routing weights on {evaluation.title}",
            "image": f"evaluation/{evaluation.folder.name}/routing.png",
        }
        for evaluation in evaluations
        if evaluation.routing_markdown is not None and evaluation.routing_image is not None
    ]
    template = (files("adajudge_hf.hub_cards") / CARD_TEMPLATE).read_text(encoding="utf-8")
    card = ModelCard.from_template(
        card_data,
        template_str=template,
        model_name=model_name,
        repo_id=repo_id,
        form=form,
        form_description=_FORM_DESCRIPTIONS[form],
        remote_code_files=REMOTE_CODE_FILES,
        num_refinement_blocks=config.num_refinement_blocks,
        pooling=config.pooling,
        status=status,
        measured=[_table(evaluation) for evaluation in evaluations],
        paper=_paper_context(base_model),
        routing=routing,
        code_revision=code_revision,
        recipe=_recipe(config, base_model, finetuning, datasets, sizes),
    )
    check_card(card)
    return card


def check_card(card: ModelCard | str) -> None:
    """Check a card's metadata offline, the way the Hub parses it; a `ValueError` lists what is wrong.

    The YAML must parse into `ModelCardData` with its `model-index` (huggingface_hub's own parsers), every result
    must have a numeric value, and `base_model` / `datasets` must be repo ids.
    """
    try:
        data = ModelCard(str(card)).data
    except ValueError as error:
        raise ValueError(f"The model card's metadata does not parse: {error}") from None
    problems = []
    for key in ("base_model", "datasets"):
        values = data.get(key)
        values = [values] if isinstance(values, str) else values or []
        problems += [
            f"`{key}`: {value!r} is not a Hub repo id (org/name)." for value in values if not is_repo_id(value)
        ]
    for result in data.eval_results or []:
        if isinstance(result.metric_value, bool) or not isinstance(result.metric_value, (int, float)):
            problems.append(f"`model-index`: {result.metric_name} has a non-numeric value {result.metric_value!r}.")
    for key in ("library_name", "pipeline_tag"):
        if not data.get(key):
            problems.append(f"`{key}` is missing.")
    if problems:
        raise ValueError("Invalid model card metadata:\n- " + "\n- ".join(problems))


def render_card(
    checkpoint_dir: str | Path,
    eval_dir: str | Path | list[str | Path] | None = None,
    *,
    repo_id: str | None = None,
    base_model: str | None = None,
    datasets: list[str] | None = None,
    license: str | None = None,
    code_revision: str | None = None,
    force: bool = False,
) -> ModelCard:
    """The model card (README.md) of a judge checkpoint, with the measured numbers of its evaluation folder(s).

    `eval_dir` is one or more `adajudge evaluate --output-dir` folders, or a folder of them; their metrics go into the
    card's table and `model-index`, each labelled with the command that produced it. `base_model` defaults to the
    backbone recorded in the checkpoint (when it is a Hub id); `repo_id` (default `org/<folder name>`) is used in the
    usage snippets; `code_revision` pins the remote-code snippet of a full checkpoint to a commit. Evaluations of
    other weights than the checkpoint's are refused unless `force` (`check_evaluations_match`).
    """
    folder = Path(checkpoint_dir)
    form, evaluations = check_checkpoint(folder, base_model=base_model), read_evaluations(eval_dir)
    if evaluations:
        check_evaluations_match(evaluations, folder, weight_file_hashes(folder), force=force)
    return checkpoint_card(
        folder,
        form,
        evaluations,
        repo_id=repo_id or f"{DEFAULT_NAMESPACE}/{folder.resolve().name}",
        base_model=base_model,
        datasets=datasets,
        license=license,
        code_revision=code_revision,
    )


def checkpoint_card(
    folder: Path, form: str, evaluations: list[Evaluation], *, base_model: str | None, **card_kwargs
) -> ModelCard:
    config = AdaJudgeConfig.from_pretrained(folder)
    recorded = getattr(config, "base_model_name_or_path", None) or config.text_config._name_or_path
    base_model = base_model or (recorded if is_repo_id(recorded) else None)
    if base_model is None:
        logger.warning(
            f"The backbone of {folder} is recorded as {recorded!r}, not a Hub repo id; the card has no `base_model`. "
            "Pass `base_model=` (e.g. 'Qwen/Qwen3-8B') to name it."
        )
    return _render(
        config=config,
        form=form,
        base_model=base_model,
        finetuning=_finetuning(folder, form),
        evaluations=evaluations,
        eval_results=[result for evaluation in evaluations for result in _eval_results(evaluation)],
        **card_kwargs,
    )


def render_family_card(name: str, repo_id: str | None = None) -> ModelCard:
    """The card of one of the paper's judges (`FAMILY`) before any checkpoint exists: the paper's K and numbers."""
    if name not in FAMILY:
        raise ValueError(f"Unknown judge {name!r}; the paper's family is {sorted(FAMILY)}.")
    base_model, license = FAMILY[name]["base_model"], FAMILY[name]["license"]
    paper = PAPER_RESULTS[base_model]
    config = AdaJudgeConfig(num_refinement_blocks=paper["k"])
    repo_id = repo_id or f"{DEFAULT_NAMESPACE}/{name}"
    return _render(
        config=config,
        form="full",
        repo_id=repo_id,
        base_model=base_model,
        datasets=FAMILY_DATASETS,
        license=license,
        finetuning="LoRA on the backbone, heads trained in full (the paper's setup; it does not report the LoRA rank, "
        "learning rate, batch size or number of epochs).",
        evaluations=[],
        eval_results=_paper_eval_results(base_model),
        code_revision=None,
        status=f"No checkpoint is published under this card yet: it describes the judge that `adajudge train` builds "
        f"on {base_model} with the paper's K = {paper['k']}, and every number in it is the paper's. Once the judge is "
        "trained and evaluated, render its card from the checkpoint and the evaluation folders "
        "(`adajudge push --render-card-only`).",
        sizes=False,  # the default backbone config stands in for the real one, whose sizes are not known offline
    )
