"""Hub publishing: `push_judge` through the real huggingface_hub client against a stand-in Hub on 127.0.0.1, loading
by repo id from the cache offline, and the model cards (rendered from real evaluation folders, and the paper's)."""

import json
import pickle
import re
import shutil
import subprocess
import sys
from importlib.resources import files
from pathlib import Path

import pytest
import torch
from conftest import BACKBONE_REPO, go_offline, randomize_head, with_random_lora
from hub_stand_in import metadata_errors
from huggingface_hub import HfApi, ModelCard, constants, snapshot_download
from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

from adajudge_hf import AdaJudgeForRewardModeling
from adajudge_hf.checkpoint import load_judge, save_judge
from adajudge_hf.evaluation import evaluate_length_baseline, evaluate_model
from adajudge_hf.hub import (
    FAMILY,
    PAPER_URL,
    build_parser,
    check_card,
    main,
    push_judge,
    render_card,
    render_family_card,
)
from adajudge_hf.modeling import REMOTE_CODE_FILES
from adajudge_hf.testing import save_tiny_causal_lm


CHATS = [
    [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "The capital of France is Paris."},
    ],
    [
        {"role": "user", "content": "How do I bake bread?"},
        {"role": "assistant", "content": "Mix flour, water, salt and yeast, then knead and bake."},
    ],
]


def rewards(model, tokenizer) -> torch.Tensor:
    inputs = tokenizer.apply_chat_template(CHATS, return_tensors="pt", return_dict=True, padding=True)
    with torch.no_grad():
        return model(**inputs).logits


@pytest.fixture
def backbone_dir(tmp_path) -> Path:
    return save_tiny_causal_lm(tmp_path / "backbone")


def trained_judge(backbone_dir: Path, form: str):
    """A tiny judge with random heads (and random LoRA weights for the adapter form), as training leaves it."""
    judge = AdaJudgeForRewardModeling.from_backbone(backbone_dir, num_refinement_blocks=2, head_hidden_size=16)
    randomize_head(judge)
    if form != "adapter":
        return judge.eval()
    return with_random_lora(judge)


def saved_judge(tmp_path: Path, backbone_dir: Path, form: str) -> tuple[Path, torch.Tensor]:
    """(checkpoint folder of `form`, the rewards of the model that was saved on `CHATS`)."""
    tokenizer = AutoTokenizer.from_pretrained(backbone_dir)
    model = trained_judge(backbone_dir, form)
    base = None if form == "full" else BACKBONE_REPO  # the backbone's Hub id, where others will fetch it
    folder = save_judge(
        model, tmp_path / f"judge-{form}", form=form, tokenizer=tokenizer, base_model_name_or_path=base
    )
    return folder, rewards(model, tokenizer)


def write_benchmarks(folder: Path) -> tuple[Path, Path, Path]:
    """Tiny RM-Bench and JudgeBench files in the official formats, and preference pairs."""
    rm_bench = folder / "rm-bench"
    rm_bench.mkdir(parents=True)
    for domain in ("chat", "safety-refuse"):
        items = [
            {
                "id": index,
                "prompt": f"Question {index} about {domain}?",
                "chosen": [
                    f"A correct answer {index}.",
                    f"A correct and longer answer {index}.",
                    f"**Correct** {index}",
                ],
                "rejected": [f"Wrong {index}.", f"A wrong and longer answer {index}.", f"**Wrong** answer {index}"],
                "subset": domain,
            }
            for index in range(3)
        ]
        (rm_bench / f"{domain}_filtered.json").write_text(json.dumps(items))
    sources = ["mmlu-pro-law", "livebench-reasoning", "livebench-math", "livecodebench"]
    pairs = [
        {
            "pair_id": f"pair-{index}",
            "original_id": str(index),
            "source": source,
            "question": f"Question {index}?",
            "response_model": "gpt-4o-2024-05-13",
            "response_A": f"Answer A {index}.",
            "response_B": f"A longer answer B {index}.",
            "label": "A>B" if index % 2 else "B>A",
        }
        for index, source in enumerate(sources)
    ]
    judgebench = folder / "judgebench_gpt-4o-2024-05-13.jsonl"
    judgebench.write_text("".join(json.dumps(pair) + "\n" for pair in pairs))
    preference = [
        {"prompt": f"Question {index}?", "chosen": f"A helpful answer {index}.", "rejected": f"No {index}."}
        for index in range(5)
    ]
    preference_pairs = folder / "pairs.jsonl"
    preference_pairs.write_text("".join(json.dumps(pair) + "\n" for pair in preference))
    return rm_bench, judgebench, preference_pairs


def evaluated(checkpoint: Path, tmp_path: Path, pairs: bool = False) -> Path:
    """Run the real evaluation of a saved judge on both benchmarks (and on preference pairs); returns the folder
    holding the reports."""
    rm_bench, judgebench, preference_pairs = write_benchmarks(tmp_path / "benchmarks")
    judge, tokenizer = load_judge(checkpoint), AutoTokenizer.from_pretrained(checkpoint)
    output = tmp_path / "eval"
    common = dict(show_progress=False, checkpoint=checkpoint)  # metrics.json records the checkpoint's fingerprint
    evaluate_model(judge, tokenizer, "rm-bench", rm_bench, output / "rm-bench", **common)
    evaluate_model(judge, tokenizer, "judgebench", judgebench, output / "judgebench", **common)
    if pairs:
        evaluate_model(judge, tokenizer, "pairs", preference_pairs, output / "pairs", **common)
    return output


def python_blocks(card: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", card, flags=re.DOTALL)


# ---------------------------------------------------------------------------------------------------------------------
# Uploads
# ---------------------------------------------------------------------------------------------------------------------


def test_push_full_form_to_a_new_branch_of_a_private_repo(hub, tmp_path, backbone_dir):
    checkpoint, _ = saved_judge(tmp_path, backbone_dir, "full")
    eval_dir = evaluated(checkpoint, tmp_path)
    info = push_judge(
        checkpoint,
        "org/judge",
        token=hub.token,
        private=True,
        revision="v1",
        commit_message="First judge",
        eval_dir=eval_dir,
        base_model=BACKBONE_REPO,
        datasets=["nvidia/HelpSteer3"],
        license="apache-2.0",
    )

    repo = hub.repos["org/judge"]
    assert repo.private
    assert set(repo.branches) == {"main", "v1"} and info.oid == repo.branches["v1"]
    assert set(hub.files("org/judge", "main")) == {".gitattributes"}  # nothing went to main
    uploaded = hub.files("org/judge", "v1")
    assert set(uploaded) == {
        ".gitattributes",
        "README.md",
        "config.json",
        "model.safetensors",
        *REMOTE_CODE_FILES,
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
        "evaluation/rm-bench/metrics.json",
        "evaluation/rm-bench/routing.png",
        "evaluation/judgebench/metrics.json",
        "evaluation/judgebench/routing.png",
    }
    for name in ("model.safetensors", "config.json", "modeling_adajudge.py", "tokenizer.json"):
        assert uploaded[name] == (checkpoint / name).read_bytes()
    assert repo.commits[repo.branches["v1"]].files["model.safetensors"].lfs  # went through the git-LFS batch API
    assert uploaded["evaluation/rm-bench/routing.png"] == (eval_dir / "rm-bench" / "routing.png").read_bytes()

    # The card pins its remote-code snippet to the upload commit, which holds the code it runs.
    card = uploaded["README.md"].decode()
    upload_commit = next(c for c in repo.commits.values() if c.message == "First judge")
    assert f'revision = "{upload_commit.oid}"' in card
    assert upload_commit.files["modeling_adajudge.py"].content == uploaded["modeling_adajudge.py"]
    metadata = ModelCard(card).data
    assert metadata.base_model == BACKBONE_REPO and metadata.license == "apache-2.0"
    assert metadata.library_name == "transformers" and metadata.pipeline_tag == "text-classification"
    assert {"reward-model", "adajudge", "trl", "custom_code"} <= set(metadata.tags)
    assert "![Mean routing weights on RM-Bench](evaluation/rm-bench/routing.png)" in card


@pytest.mark.parametrize("form", ["adapter", "heads"])
def test_push_adapter_and_heads_forms(hub, tmp_path, backbone_dir, form, monkeypatch):
    checkpoint, _ = saved_judge(tmp_path, backbone_dir, form)
    monkeypatch.setenv("HF_TOKEN", hub.token)  # the token comes from the environment
    push_judge(checkpoint, f"org/judge-{form}")

    uploaded = hub.files(f"org/judge-{form}")
    expected = {".gitattributes", "README.md", "config.json", "judge_head.safetensors"}
    expected |= {"tokenizer.json", "tokenizer_config.json", "chat_template.jinja"}
    if form == "adapter":
        expected |= {"adapter_model.safetensors", "adapter_config.json"}
    assert set(uploaded) == expected  # no remote code: these forms load through the package
    # A repo id with an adapter opens the adapter's base model: it must name the judge itself, not its backbone.
    if form == "adapter":
        assert json.loads(uploaded["adapter_config.json"])["base_model_name_or_path"] == f"org/judge-{form}"
    assert len(hub.repos[f"org/judge-{form}"].commits) == 2  # the repo's first commit, then one upload
    card = ModelCard(uploaded["README.md"].decode())
    assert card.data.base_model == BACKBONE_REPO  # recorded by save_judge
    assert ("peft" in card.data.tags) == (form == "adapter")
    assert f'load_judge("org/judge-{form}")' in card.text


def test_push_cli(hub, tmp_path, backbone_dir, capsys):
    checkpoint, _ = saved_judge(tmp_path, backbone_dir, "heads")
    argv = [str(checkpoint), "org/judge", "--token", hub.token, "--revision", "dev", "--commit-message", "Heads v2"]
    assert main(argv + ["--license", "apache-2.0", "--dataset", "nvidia/HelpSteer3"]) == 0
    assert "Pushed to" in capsys.readouterr().out
    repo = hub.repos["org/judge"]
    assert repo.commits[repo.branches["dev"]].message == "Heads v2"
    card = ModelCard(hub.files("org/judge", "dev")["README.md"].decode())
    assert card.data.license == "apache-2.0" and card.data.datasets == ["nvidia/HelpSteer3"]


# ---------------------------------------------------------------------------------------------------------------------
# Loading by repo id, offline
# ---------------------------------------------------------------------------------------------------------------------


def test_full_form_loads_by_repo_id_offline_with_identical_rewards(hub, tmp_path, backbone_dir, monkeypatch):
    checkpoint, expected = saved_judge(tmp_path, backbone_dir, "full")
    push_judge(checkpoint, "org/judge", token=hub.token)
    snapshot_download("org/judge")
    go_offline(hub, monkeypatch)

    tokenizer = AutoTokenizer.from_pretrained("org/judge")
    for auto_class in (AutoModel, AutoModelForSequenceClassification):
        model = auto_class.from_pretrained("org/judge")
        assert isinstance(model, AdaJudgeForRewardModeling)  # the installed class, no remote code
        # Same weights, but memory-mapped from the file (unaligned) instead of in-memory: BLAS may sum in another
        # order, so fp32 rewards agree to rounding (6e-8 seen), not bit for bit.
        torch.testing.assert_close(rewards(model, tokenizer), expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(rewards(load_judge(snapshot_download("org/judge")), tokenizer), expected)

    # The card's usage snippets run as printed, and return the raw reward (no sigmoid).
    card = Path(snapshot_download("org/judge"), "README.md").read_text()
    usage, with_pipeline = python_blocks(card)[:2]
    namespace = {}
    exec(usage, namespace)
    single = tokenizer.apply_chat_template(namespace["chat"], return_tensors="pt", return_dict=True)
    with torch.no_grad():
        reference = AutoModelForSequenceClassification.from_pretrained("org/judge")(**single).logits[0, 0].item()
    assert namespace["reward"] == pytest.approx(reference, abs=1e-6)
    exec(with_pipeline.replace("print(", "score = ("), namespace)
    assert namespace["score"] == pytest.approx(reference, abs=1e-5)


@pytest.mark.parametrize("form", ["adapter", "heads"])
def test_adapter_and_heads_forms_load_by_repo_id_offline(hub, tmp_path, backbone_dir, form, monkeypatch):
    checkpoint, expected = saved_judge(tmp_path, backbone_dir, form)
    api = HfApi(token=hub.token)
    api.create_repo(BACKBONE_REPO)
    api.upload_folder(folder_path=backbone_dir, repo_id=BACKBONE_REPO)
    push_judge(checkpoint, f"org/judge-{form}", token=hub.token)
    snapshot_download(f"org/judge-{form}")
    snapshot_download(BACKBONE_REPO)
    go_offline(hub, monkeypatch)

    judge = load_judge(f"org/judge-{form}")  # the call the card documents; the backbone comes from its own repo
    torch.testing.assert_close(rewards(judge, AutoTokenizer.from_pretrained(f"org/judge-{form}")), expected)


@pytest.mark.slow
def test_full_form_loads_with_pinned_remote_code_without_the_package(hub, tmp_path, backbone_dir, monkeypatch):
    checkpoint, expected = saved_judge(tmp_path, backbone_dir, "full")
    push_judge(checkpoint, "org/judge", token=hub.token)
    card = Path(snapshot_download("org/judge"), "README.md").read_text()
    remote_code = python_blocks(card)[2]
    snapshot_download("org/judge", revision=re.search(r'revision = "([0-9a-f]{40})"', remote_code).group(1))
    go_offline(hub, monkeypatch)

    script = (
        "import json, sys\n"
        f"{remote_code}\n"
        f"chats = {CHATS!r}\n"
        "inputs = tokenizer.apply_chat_template(chats, return_tensors='pt', return_dict=True, padding=True)\n"
        "assert 'adajudge_hf' not in sys.modules and type(model).__module__.startswith('transformers_modules')\n"
        "print(json.dumps(model(**inputs).logits.tolist()))\n"
    )
    env = {"PATH": "/usr/bin:/bin", "HF_HOME": constants.HF_HOME, "HF_HUB_OFFLINE": "1", "HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    torch.testing.assert_close(torch.tensor(json.loads(done.stdout.splitlines()[-1])), expected)


# ---------------------------------------------------------------------------------------------------------------------
# Model cards
# ---------------------------------------------------------------------------------------------------------------------


def test_card_from_real_evaluation_holds_the_measured_numbers(hub, tmp_path, backbone_dir):
    checkpoint, _ = saved_judge(tmp_path, backbone_dir, "full")
    eval_dir = evaluated(checkpoint, tmp_path, pairs=True)
    card = render_card(checkpoint, eval_dir, repo_id="org/judge", base_model=BACKBONE_REPO, license="apache-2.0")

    check_card(card)
    card.validate()  # huggingface_hub's own check (POST /api/validate-yaml, served by the stand-in)
    rm_bench = json.loads((eval_dir / "rm-bench" / "metrics.json").read_text())
    judgebench = json.loads((eval_dir / "judgebench" / "metrics.json").read_text())
    results = {(r.dataset_type, r.metric_name): r.metric_value for r in ModelCard(str(card)).data.eval_results}
    assert results[("THU-KEG/RM-Bench", "Overall accuracy (chat, safety)")] == round(rm_bench["metrics"]["overall"], 2)
    assert results[("THU-KEG/RM-Bench", "Hard accuracy (chat, safety)")] == round(rm_bench["metrics"]["hard"], 2)
    assert results[("ScalerLab/JudgeBench", "Overall accuracy")] == round(judgebench["metrics"]["overall"], 2)
    pairs = json.loads((eval_dir / "pairs" / "metrics.json").read_text())["metrics"]
    assert results[("preference-pairs", "Pairwise accuracy")] == round(pairs["accuracy"], 2)
    assert all(r.source_url is None for r in card.data.eval_results)  # measured here, not taken from the paper

    # Each table is labelled with the command that measured it, and shows the numbers of its metrics.json.
    text = card.text
    assert (
        f"`adajudge evaluate --model {checkpoint} --benchmark rm-bench --data {tmp_path}/benchmarks/rm-bench`" in text
    )
    assert f"; weights fingerprint `{rm_bench['judge']['fingerprint']}`):" in text  # which weights were measured
    assert f"| **overall** | **{rm_bench['metrics']['overall']:.1f}** |" in text
    assert f"| **overall** (all pairs) | **{judgebench['metrics']['overall']:.1f}** | 4 |" in text
    assert "Not scored: math, code" in text
    for category, values in judgebench["metrics"]["categories"].items():
        assert f"| {category} | {values['accuracy']:.1f} | 1 |" in text
    interval = f"{pairs['ci_low']:.1f}-{pairs['ci_high']:.1f}"
    assert f"| {pairs['accuracy']:.1f} | {interval} | {pairs['num_ties']} | {pairs['mean_margin']:.3f} | 5 |" in text
    assert "pooling router π" in text  # the routing report's tables
    assert text.index("**RM-Bench**") < text.index("**JudgeBench") < text.index("**Preference pairs (pairs.jsonl)**")
    assert "Reported by the paper" not in text  # the tiny backbone is not one of the paper's


@pytest.mark.parametrize("name", sorted(FAMILY))
def test_family_cards_are_rendered_from_the_template_with_the_paper_numbers(hub, name):
    shipped = (files("adajudge_hf.hub_cards") / f"{name}.md").read_text(encoding="utf-8")
    assert shipped == str(render_family_card(name))  # regenerate with the command in hub_cards/README.md
    check_card(shipped)
    card = ModelCard(shipped)
    card.validate()
    assert card.data.base_model == FAMILY[name]["base_model"] and card.data.license == FAMILY[name]["license"]
    assert card.data.datasets == ["nvidia/HelpSteer3"]
    assert {r.source_url for r in card.data.eval_results} == {PAPER_URL}  # every number is attributed to the paper
    assert "Reported by the paper (not measured on this checkpoint)" in card.text
    assert "### Measured by this project" not in card.text
    assert 'function_to_apply="none"' in card.text and "sigmoid" in card.text


def test_render_card_only_cli_writes_a_valid_card(tmp_path, backbone_dir):
    checkpoint, _ = saved_judge(tmp_path, backbone_dir, "heads")
    output = tmp_path / "README.md"
    assert main(["--render-card-only", str(checkpoint), "org/judge-heads", "--output", str(output)]) == 0
    card = output.read_text()
    assert metadata_errors(card) == []
    assert "No measurement of this checkpoint is published yet" in card
    assert main(["--render-card-only", "--family", "adajudge-qwen3-8b", "--output", str(tmp_path / "f.md")]) == 0


# ---------------------------------------------------------------------------------------------------------------------
# Bad input: a clear error and nothing sent
# ---------------------------------------------------------------------------------------------------------------------


def test_push_without_any_token_sends_nothing(hub, tmp_path, backbone_dir, capsys):
    checkpoint, _ = saved_judge(tmp_path, backbone_dir, "full")
    with pytest.raises(ValueError, match="No Hugging Face token found, so nothing was sent.*HF_TOKEN.*hf auth login"):
        push_judge(checkpoint, "org/judge")
    assert main([str(checkpoint), "org/judge"]) == 2
    assert "No Hugging Face token found" in capsys.readouterr().err
    assert hub.requests == [] and hub.repos == {}


def test_push_refuses_a_checkpoint_missing_its_heads_file(hub, tmp_path, backbone_dir):
    checkpoint, _ = saved_judge(tmp_path, backbone_dir, "heads")
    (checkpoint / "judge_head.safetensors").unlink()
    with pytest.raises(ValueError, match="no judge_head.safetensors"):
        push_judge(checkpoint, "org/judge", token=hub.token)
    assert hub.requests == [] and hub.repos == {}


class _Payload:
    """Unpickling this would create `sentinel`: proof that pushing never loads the pickle."""

    def __init__(self, sentinel: Path):
        self.sentinel = sentinel

    def __reduce__(self):
        return (Path.touch, (self.sentinel,))


def test_push_refuses_a_pickle_checkpoint(hub, tmp_path, backbone_dir):
    checkpoint, _ = saved_judge(tmp_path, backbone_dir, "full")
    sentinel = tmp_path / "pwned"
    (checkpoint / "pytorch_model.bin").write_bytes(pickle.dumps(_Payload(sentinel)))
    with pytest.raises(ValueError, match=r"pickle files \(pytorch_model.bin\)"):
        push_judge(checkpoint, "org/judge", token=hub.token)
    assert not sentinel.exists()
    assert hub.requests == [] and hub.repos == {}


def test_push_refuses_a_backbone_recorded_as_a_local_folder(hub, tmp_path, backbone_dir):
    tokenizer = AutoTokenizer.from_pretrained(backbone_dir)
    checkpoint = save_judge(
        trained_judge(backbone_dir, "heads"), tmp_path / "judge", form="heads", tokenizer=tokenizer
    )
    with pytest.raises(ValueError, match="not a Hub repo id, so nobody else could load this judge"):
        push_judge(checkpoint, "org/judge", token=hub.token)
    assert hub.requests == []


@pytest.mark.parametrize("form", ["adapter", "heads"])
def test_push_cli_names_the_hub_backbone_of_a_judge_trained_on_a_local_copy(
    hub, tmp_path, backbone_dir, form, monkeypatch, capsys
):
    """`adajudge push --base-model`: the local backbone the judge was trained on is replaced by its Hub id in the
    pushed config.json, so the judge loads by repo id; without the flag the one-line refusal names the flag."""
    model = trained_judge(backbone_dir, form)
    tokenizer = AutoTokenizer.from_pretrained(backbone_dir)
    expected = rewards(model, tokenizer)
    checkpoint = save_judge(model, tmp_path / "judge", form=form, tokenizer=tokenizer)  # records the local folder
    capsys.readouterr()
    assert main([str(checkpoint), "org/judge", "--token", hub.token]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--base-model <org>/<backbone>" in err and "save_judge(" not in err
    assert main([str(checkpoint), "org/judge", "--token", hub.token, "--base-model", str(backbone_dir)]) == 2
    assert "--base-model must be the Hub repo id" in capsys.readouterr().err
    assert hub.requests == []

    assert main([str(checkpoint), "org/judge", "--token", hub.token, "--base-model", BACKBONE_REPO]) == 0
    assert json.loads(hub.files("org/judge")["config.json"])["base_model_name_or_path"] == BACKBONE_REPO
    assert ModelCard(hub.files("org/judge")["README.md"].decode()).data.base_model == BACKBONE_REPO
    api = HfApi(token=hub.token)
    api.create_repo(BACKBONE_REPO)
    api.upload_folder(folder_path=backbone_dir, repo_id=BACKBONE_REPO)
    snapshot_download("org/judge")
    snapshot_download(BACKBONE_REPO)
    go_offline(hub, monkeypatch)
    torch.testing.assert_close(rewards(load_judge("org/judge"), tokenizer), expected)


def test_card_checks_reject_a_broken_model_index(hub):
    broken = "---\nlicense: mit\nmodel-index:\n- name: x\n  results:\n  - task: {type: text-classification}\n---\n"
    with pytest.raises(ValueError, match="metadata does not parse"):
        check_card(broken)
    api = HfApi(token=hub.token)
    api.create_repo("org/judge")
    with pytest.raises(
        ValueError, match=r"(?s)Invalid metadata in README.md.*model-index"
    ):  # the Hub check, on upload
        api.upload_file(path_or_fileobj=broken.encode(), path_in_repo="README.md", repo_id="org/judge")
    assert set(hub.files("org/judge")) == {".gitattributes"}


def retrained(checkpoint: Path, folder: Path) -> Path:
    """A copy of a full checkpoint with other head weights: the next checkpoint of the same run."""
    shutil.copytree(checkpoint, folder)
    judge = AdaJudgeForRewardModeling.from_pretrained(folder)
    randomize_head(judge, seed=5).save_pretrained(folder)
    return folder


def test_push_refuses_evaluations_of_another_checkpoint(hub, tmp_path, backbone_dir, capsys):
    evaluated_checkpoint, _ = saved_judge(tmp_path, backbone_dir, "full")
    eval_dir = evaluated(evaluated_checkpoint, tmp_path)
    checkpoint = retrained(evaluated_checkpoint, tmp_path / "checkpoint-2000")
    message = (
        rf"{eval_dir}/rm-bench/metrics.json holds the scores of {evaluated_checkpoint} \(weights sha256:[0-9a-f]{{64}}\), "
        rf"not of {checkpoint} \(weights sha256:[0-9a-f]{{64}}\).*pass --force"
    )
    with pytest.raises(ValueError, match=message):
        push_judge(checkpoint, "org/judge", token=hub.token, eval_dir=eval_dir)
    with pytest.raises(ValueError, match=message):
        render_card(checkpoint, eval_dir)
    assert main([str(checkpoint), "org/judge", "--token", hub.token, "--eval-dir", str(eval_dir)]) == 2
    assert "holds the scores of" in capsys.readouterr().err
    assert hub.requests == [] and hub.repos == {}  # refused before the first request

    # The length baseline is not this judge either; a forced push publishes the other checkpoint's numbers.
    evaluate_length_baseline("pairs", write_benchmarks(tmp_path / "more")[2], tmp_path / "baseline")
    with pytest.raises(ValueError, match="holds the scores of length-baseline, not of"):
        push_judge(evaluated_checkpoint, "org/judge", token=hub.token, eval_dir=tmp_path / "baseline")
    assert main([str(checkpoint), "org/judge", "--token", hub.token, "--eval_dir", str(eval_dir), "--force"]) == 0
    assert "evaluation/rm-bench/metrics.json" in hub.files("org/judge")
    push_judge(evaluated_checkpoint, "org/judge-evaluated", token=hub.token, eval_dir=eval_dir)  # its own: accepted


def test_push_cli_accepts_underscore_flags_like_train():
    parser = build_parser()
    dashes = ["ckpt", "org/x", "--eval-dir", "e", "--base-model", "o/b", "--commit-message", "m", "--force"]
    underscores = ["ckpt", "org/x", "--eval_dir", "e", "--base_model", "o/b", "--commit_message", "m", "--force"]
    assert parser.parse_args(dashes) == parser.parse_args(underscores)
    render = ["--render_card_only", "--family", "adajudge-qwen3-8b", "--output", "card.md"]
    assert parser.parse_args(render).render_card_only
