"""One judge, every door: each save form (full, adapter + heads, heads) opens through the Auto classes, `pipeline`,
TRL's string arguments, `load_judge` and `adajudge evaluate`, by folder and by Hub repo id, with the rewards the judge
had when saved; broken files end in one clear error that names the file."""

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import BACKBONE_REPO, asgi_client, go_offline, randomize_head, with_random_lora
from datasets import Dataset
from hub_stand_in import HubStandIn
from huggingface_hub import HfApi, snapshot_download
from peft import LoraConfig, PeftModel
from safetensors.torch import load_file, save_file
from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback, pipeline
from trl import GRPOConfig, GRPOTrainer, RewardConfig, RewardTrainer

from adajudge_hf import AdaJudgeConfig, AdaJudgeForRewardModeling
from adajudge_hf.checkpoint import detect_judge_form, load_judge, save_judge
from adajudge_hf.evaluation import evaluate_model
from adajudge_hf.evaluation.cli import main as evaluate_main
from adajudge_hf.hub import push_judge
from adajudge_hf.testing import save_tiny_causal_lm
from adajudge_hf.trainer import AdaJudgeRewardConfig, AdaJudgeRewardTrainer


FORMS = ("full", "adapter", "heads")
CHATS = [
    [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "The capital of France is Paris."},
    ],
    [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}],
]
ATOL = 1e-6  # fp32: the same weights, summed in another order after a reload (memory-mapped, unaligned) at most


def trained(backbone: Path, form: str):
    """A tiny judge as training leaves it: random heads, and random LoRA weights for the adapter form."""
    torch.manual_seed(0)
    judge = AdaJudgeForRewardModeling.from_backbone(backbone, num_refinement_blocks=2, head_hidden_size=16)
    randomize_head(judge)
    if form != "adapter":
        return judge.eval()
    return with_random_lora(judge)


def rewards(model, tokenizer) -> torch.Tensor:
    """Rewards of `CHATS` as every tool feeds them: chat template, padded batch, no response mask."""
    inputs = tokenizer.apply_chat_template(CHATS, return_tensors="pt", return_dict=True, padding=True)
    with torch.no_grad():
        return model(**inputs).logits.squeeze(-1)


@pytest.fixture(scope="module")
def judges(tmp_path_factory) -> dict[str, tuple[Path, torch.Tensor, object]]:
    """{form: (folder, rewards of the saved model on CHATS, the saved model)}."""
    root = tmp_path_factory.mktemp("doors")
    backbone = save_tiny_causal_lm(root / "backbone")
    tokenizer = AutoTokenizer.from_pretrained(backbone)
    saved = {}
    for form in FORMS:
        model = trained(backbone, form)
        folder = save_judge(model, root / form, form=form, tokenizer=tokenizer)
        saved[form] = (folder, rewards(model, tokenizer), model)
    return saved


def open_by(door: str, name: str):
    if door == "pipeline":
        return pipeline("text-classification", model=name, function_to_apply="none").model
    if door == "load_judge":
        return load_judge(name)
    return {
        "AutoModel": AutoModel,
        "AutoModelForSequenceClassification": AutoModelForSequenceClassification,
        "AdaJudgeForRewardModeling": AdaJudgeForRewardModeling,
    }[door].from_pretrained(name)


DOORS = ("AutoModelForSequenceClassification", "AutoModel", "AdaJudgeForRewardModeling", "pipeline", "load_judge")


@pytest.mark.parametrize("door", DOORS)
@pytest.mark.parametrize("form", FORMS)
def test_every_form_opens_through_every_door_with_identical_rewards(judges, form, door):
    folder, expected, _ = judges[form]
    model = open_by(door, str(folder))
    assert isinstance(model, AdaJudgeForRewardModeling) and not model.training
    torch.testing.assert_close(rewards(model, AutoTokenizer.from_pretrained(folder)), expected, rtol=0, atol=ATOL)


@pytest.mark.parametrize("form", FORMS)
def test_a_loaded_judge_saved_as_full_reopens_through_the_auto_classes(judges, form, tmp_path):
    """load -> save_judge(form="full") -> AutoModelForSequenceClassification: the merged checkpoint keeps plain keys."""
    folder, expected, _ = judges[form]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    merged = save_judge(load_judge(folder), tmp_path / "merged", form="full", tokenizer=tokenizer)
    model, info = AutoModelForSequenceClassification.from_pretrained(merged, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    torch.testing.assert_close(rewards(model.eval(), tokenizer), expected, rtol=0, atol=ATOL)


@pytest.mark.parametrize("dtype, atol", [("float32", 1e-5), ("bfloat16", 0.02)])  # bf16 backbone: as for the loaders
@pytest.mark.parametrize("form", FORMS)
def test_every_form_serves_the_same_rewards(judges, form, dtype, atol):
    """`adajudge serve FOLDER [--dtype]`'s loader and app: /classify (the whole conversation, as verl sends it) and
    /score (prompt and response messages, as slime sends them) answer the rewards of the saved model."""
    import asyncio

    from adajudge_hf.serve import create_app, load_for_serving

    folder, expected, _ = judges[form]
    served = load_for_serving(str(folder), device="cpu", dtype=dtype)
    assert served.info["form"] == form and served.model.model.dtype == getattr(torch, dtype)
    texts = [served.tokenizer.apply_chat_template(chat, tokenize=False) for chat in CHATS]

    async def ask():
        async with asgi_client(create_app(served)) as client:
            classify = await client.post("/classify", json={"input": texts})
            scores = [await client.post("/score", json={"prompt": chat[:1], "response": chat[1:]}) for chat in CHATS]
            return classify, scores

    classify, scores = asyncio.run(ask())
    assert classify.status_code == 200 and all(score.status_code == 200 for score in scores), classify.text
    classified = torch.tensor([d["probs"][0] for d in classify.json()["data"]])
    torch.testing.assert_close(classified, expected, atol=atol, rtol=0)
    torch.testing.assert_close(torch.tensor([s.json()["reward"] for s in scores]), expected, atol=atol, rtol=0)


def test_pipeline_returns_the_raw_reward_of_every_form(judges):
    for folder, expected, _ in judges.values():
        tokenizer = AutoTokenizer.from_pretrained(folder)
        scorer = pipeline("text-classification", model=str(folder), function_to_apply="none")
        scores = [scorer(tokenizer.apply_chat_template(chat, tokenize=False))[0]["score"] for chat in CHATS]
        torch.testing.assert_close(torch.tensor(scores), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("door", ["AutoModelForSequenceClassification", "load_judge"])
def test_every_form_loads_in_bf16_with_fp32_heads(judges, door):
    """`dtype=torch.bfloat16`: the backbone in bf16, the heads kept in fp32 whatever the form, so the full and heads
    forms of the same weights give the same bf16 rewards, and every form stays within bf16 rounding of fp32."""
    loaded = {}
    for form, (folder, expected, _) in judges.items():
        load = load_judge if door == "load_judge" else AutoModelForSequenceClassification.from_pretrained
        model = load(str(folder), dtype=torch.bfloat16)
        assert model.model.dtype == torch.bfloat16
        assert {parameter.dtype for parameter in model.judge_head.parameters()} == {torch.float32}
        loaded[form] = rewards(model, AutoTokenizer.from_pretrained(folder))
        torch.testing.assert_close(loaded[form], expected, rtol=0, atol=0.02)  # bf16 backbone (4e-3 seen)
    torch.testing.assert_close(loaded["heads"], loaded["full"], rtol=0, atol=ATOL)


def test_adapter_form_follows_transformers_peft_convention(judges):
    """Opened by path, the adapter is loaded by transformers' PEFT integration (unmerged, frozen for scoring);
    `load_judge` merges it into a plain, trainable judge."""
    folder, expected, _ = judges["adapter"]
    opened = AutoModelForSequenceClassification.from_pretrained(folder)
    assert list(opened.peft_config) == ["default"]
    lora = [parameter for name, parameter in opened.named_parameters() if "lora_B" in name]
    assert lora and not any(parameter.requires_grad for parameter in lora)
    merged = load_judge(folder)
    assert not any("lora_" in name for name, _ in merged.named_parameters())
    assert all(parameter.requires_grad for parameter in merged.parameters())
    tokenizer = AutoTokenizer.from_pretrained(folder)
    bare = load_judge(folder.parent / "heads")  # the same heads on the bare backbone: the adapter matters
    assert not torch.allclose(rewards(bare, tokenizer), expected, atol=1e-3)


@pytest.mark.parametrize("form", FORMS)
def test_trl_string_arguments_open_every_form(judges, form, tmp_path):
    folder, expected, _ = judges[form]
    prompts = Dataset.from_dict({"prompt": [[{"role": "user", "content": "Hi?"}]] * 2})
    policy = save_tiny_causal_lm(tmp_path / "policy", seed=1)
    common = dict(output_dir=str(tmp_path / "out"), use_cpu=True, bf16=False, report_to="none", save_strategy="no")
    grpo = GRPOTrainer(
        model=str(policy),
        reward_funcs=str(folder),
        args=GRPOConfig(per_device_train_batch_size=2, num_generations=2, max_completion_length=4, **common),
        train_dataset=prompts,
    )
    reward_model, reward_tokenizer = grpo.reward_funcs[0], grpo.reward_processing_classes[0]
    assert isinstance(reward_model, AdaJudgeForRewardModeling)
    assert reward_tokenizer.name_or_path == str(folder)  # the judge's own tokenizer, not its backbone's
    torch.testing.assert_close(rewards(reward_model, reward_tokenizer), expected, rtol=0, atol=ATOL)

    pairs = Dataset.from_dict({"chosen": ["A good answer."] * 2, "rejected": ["Bad."] * 2})
    trainer = RewardTrainer(model=str(folder), args=RewardConfig(**common), train_dataset=pairs)
    assert isinstance(trainer.model, AdaJudgeForRewardModeling)
    torch.testing.assert_close(rewards(trainer.model, reward_tokenizer), expected, rtol=0, atol=ATOL)


def write_pairs(path: Path) -> Path:
    rows = [
        {"prompt": "What is the capital of France?", "chosen": "Paris.", "rejected": "Rome, I think."},
        {"prompt": "How do I bake bread?", "chosen": "Knead flour, water, yeast; bake.", "rejected": "No idea."},
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.mark.parametrize("form", FORMS)
def test_evaluate_cli_scores_every_form_like_the_saved_model(judges, form, tmp_path):
    folder, _, model = judges[form]
    data = write_pairs(tmp_path / "pairs.jsonl")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    evaluate_model(model, tokenizer, "pairs", data, tmp_path / "expected", show_progress=False)
    args = ["--model", str(folder), "--benchmark", "pairs", "--data", str(data), "--output-dir", str(tmp_path / "cli")]
    assert evaluate_main([*args, "--dtype", "float32"]) == 0  # the saved model's dtype (auto may pick bf16)

    def read(folder: Path) -> list[dict]:
        return [json.loads(line) for line in (folder / "rewards.jsonl").read_text().splitlines()]

    expected, scored = read(tmp_path / "expected"), read(tmp_path / "cli")
    assert len(scored) == len(expected) == 2
    for want, got in zip(expected, scored):
        for key in ("score_chosen", "score_rejected"):
            assert got[key] == pytest.approx(want[key], abs=ATOL)


# ---------------------------------------------------------------------------------------------------------------------
# By Hub repo id (the stand-in Hub of test_hub.py), offline from the cache
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("form", FORMS)
def test_every_form_opens_by_repo_id_offline(hub: HubStandIn, tmp_path, monkeypatch, form):
    backbone = save_tiny_causal_lm(tmp_path / "backbone")
    tokenizer = AutoTokenizer.from_pretrained(backbone)
    model = trained(backbone, form)
    expected = rewards(model, tokenizer)
    base = None if form == "full" else BACKBONE_REPO
    folder = save_judge(model, tmp_path / "judge", form=form, tokenizer=tokenizer, base_model_name_or_path=base)
    api = HfApi(token=hub.token)
    api.create_repo(BACKBONE_REPO)
    api.upload_folder(folder_path=backbone, repo_id=BACKBONE_REPO)
    push_judge(folder, "org/judge", token=hub.token)
    snapshot_download("org/judge")
    snapshot_download(BACKBONE_REPO)
    go_offline(hub, monkeypatch)

    for door in DOORS:
        opened = open_by(door, "org/judge")
        assert isinstance(opened, AdaJudgeForRewardModeling), door  # never a stock seq-cls model of the backbone
        torch.testing.assert_close(rewards(opened, tokenizer), expected, rtol=0, atol=ATOL, msg=door)


def test_heads_checkpoints_of_a_full_judge_from_the_hub_name_that_repo(hub: HubStandIn, tmp_path, monkeypatch):
    """Training the heads of a full judge given by Hub repo id: its backbone is fine-tuned, so the heads checkpoints
    must read their backbone from that repo, not from the original backbone its config records."""
    backbone = save_tiny_causal_lm(tmp_path / "backbone")
    tokenizer = AutoTokenizer.from_pretrained(backbone)
    judge = trained(backbone, "full")
    with torch.no_grad():
        for parameter in judge.model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)  # as after full fine-tuning
    push_judge(save_judge(judge, tmp_path / "judge", form="full", tokenizer=tokenizer), "org/judge", token=hub.token)
    snapshot_download("org/judge")
    go_offline(hub, monkeypatch)

    args = AdaJudgeRewardConfig(
        output_dir=str(tmp_path / "out"), freeze_backbone=True, max_steps=1, save_strategy="steps", save_steps=1,
        per_device_train_batch_size=2, report_to=[], use_cpu=True, max_length=64,
    )  # fmt: skip
    pairs = Dataset.from_list(
        [{"chosen": chat, "rejected": chat[:1] + [{"role": "assistant", "content": "no"}]} for chat in CHATS]
    )
    trainer = AdaJudgeRewardTrainer("org/judge", args, train_dataset=pairs, processing_class=tokenizer)
    trainer.train()
    checkpoint = tmp_path / "out" / "checkpoint-1"
    assert detect_judge_form(checkpoint) == "heads"
    assert json.loads((checkpoint / "config.json").read_text())["base_model_name_or_path"] == "org/judge"
    torch.testing.assert_close(
        rewards(load_judge(checkpoint), tokenizer), rewards(trainer.model.eval(), tokenizer), rtol=0, atol=ATOL
    )


# ---------------------------------------------------------------------------------------------------------------------
# Bad files: one clear line that names the file
# ---------------------------------------------------------------------------------------------------------------------


def copy_of(judges, form: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(judges[form][0], tmp_path / form))


@pytest.mark.parametrize(
    "form, filename, tensor",
    [
        ("adapter", "adapter_model.safetensors", "lora_B"),
        ("adapter", "judge_head.safetensors", "pooling_router.2.weight"),
        ("heads", "judge_head.safetensors", "expert_heads.last.0.weight"),
        ("full", "model.safetensors", "judge_head.attention_pool.weight"),
    ],
)
def test_nan_weights_are_refused_in_every_form_naming_tensor_and_file(judges, tmp_path, form, filename, tensor):
    folder = copy_of(judges, form, tmp_path)
    weights = load_file(folder / filename)
    name = next(key for key in weights if tensor in key)
    weights[name] = torch.full_like(weights[name], float("nan"))
    save_file(weights, folder / filename, metadata={"format": "pt"})
    for load in (load_judge, AutoModelForSequenceClassification.from_pretrained):
        with pytest.raises(ValueError, match=rf"{filename}.* has NaN or Inf values in 1 tensor\(s\): .*{tensor}"):
            load(folder)


@pytest.mark.parametrize("tensor", ["judge_head.pooling_router.2.weight", "model.layers.0.mlp.up_proj.weight"])
def test_a_full_checkpoint_missing_weights_is_refused_not_filled_at_random(judges, tmp_path, tensor):
    folder = copy_of(judges, "full", tmp_path)
    weights = load_file(folder / "model.safetensors")
    del weights[tensor]
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    for load in (load_judge, AutoModelForSequenceClassification.from_pretrained, AutoModel.from_pretrained):
        with pytest.raises(ValueError, match=rf"is missing 1 weight\(s\) of the judge, e.g. \['{tensor}'\]"):
            load(folder)


def test_a_backbone_missing_weights_is_refused_for_the_heads_form(judges, tmp_path):
    folder = copy_of(judges, "heads", tmp_path)
    backbone = Path(shutil.copytree(AdaJudgeConfig.from_pretrained(folder).base_model_name_or_path, tmp_path / "bb"))
    weights = load_file(backbone / "model.safetensors")
    del weights[next(key for key in weights if "layers.1.self_attn.q_proj" in key)]
    save_file(weights, backbone / "model.safetensors", metadata={"format": "pt"})
    for load in (load_judge, AutoModelForSequenceClassification.from_pretrained):
        with pytest.raises(ValueError, match=r"backbone .*bb is missing 1 weight\(s\).*layers.1.self_attn.q_proj"):
            load(folder, base_model_name_or_path=str(backbone))


@pytest.mark.parametrize("form, filename", [("full", "model.safetensors"), ("heads", "judge_head.safetensors"),
                                            ("adapter", "adapter_model.safetensors")])  # fmt: skip
@pytest.mark.parametrize("damage", ["truncated", "empty"])
def test_broken_safetensors_name_the_file(judges, tmp_path, capsys, form, filename, damage):
    folder = copy_of(judges, form, tmp_path)
    path = folder / filename
    path.write_bytes(b"" if damage == "empty" else path.read_bytes()[: path.stat().st_size // 2])
    message = "is empty" if damage == "empty" else "is truncated or corrupt"
    for load in (load_judge, AutoModelForSequenceClassification.from_pretrained):
        with pytest.raises(ValueError, match=rf"{filename} {message}.*Save or download it again"):
            load(folder)
    data = write_pairs(tmp_path / "pairs.jsonl")
    args = ["--model", str(folder), "--benchmark", "pairs", "--data", str(data), "--output-dir", str(tmp_path / "o")]
    assert evaluate_main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and filename in err[0] and message in err[0] and "Traceback" not in err[0]


def test_a_missing_local_folder_is_named_as_such(tmp_path, capsys):
    for missing in (str(tmp_path / "no-such-judge"), "./no-such-judge", "outputs/run-1/judge"):
        for load in (load_judge, AdaJudgeForRewardModeling.from_pretrained):  # the Auto classes fail before us
            with pytest.raises(FileNotFoundError, match="does not exist: there is no such local folder"):
                load(missing)
    args = ["--model", str(tmp_path / "nope"), "--benchmark", "pairs", "--output-dir", str(tmp_path / "o")]
    args += ["--data", str(write_pairs(tmp_path / "pairs.jsonl"))]
    assert evaluate_main(args) == 2
    assert "does not exist: there is no such local folder" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------------
# A process without the package
# ---------------------------------------------------------------------------------------------------------------------

WITHOUT_PACKAGE = """
import sys

class NoAdaJudge:  # this process cannot import the package, as on a machine that never installed it
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "adajudge_hf":
            raise ImportError("adajudge_hf is not installed here")

sys.meta_path.insert(0, NoAdaJudge())
from transformers import AutoTokenizer

kwargs = {"trust_remote_code": eval(sys.argv[2])} if len(sys.argv) > 2 else {}
tokenizer = AutoTokenizer.from_pretrained(sys.argv[1], **kwargs)
print("vocabulary", len(tokenizer))
"""


@pytest.mark.parametrize(
    "form, trust_remote_code",
    [
        ("adapter", None),  # no remote code in these folders: nothing to ask
        ("heads", None),
        # The full form carries the model's code (it loads without the package), so transformers asks before running
        # it, as for any remote-code repo; saying either answer up front loads the tokenizer without the question.
        ("full", False),
        ("full", True),
    ],
)
def test_tokenizer_loads_without_the_package_and_without_a_prompt(judges, tmp_path, form, trust_remote_code):
    folder = judges[form][0]
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "HOME": str(tmp_path), "HF_HOME": str(tmp_path / "hf")}
    answer = [] if trust_remote_code is None else [str(trust_remote_code)]
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_PACKAGE, str(folder), *answer],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "trust_remote_code" not in done.stdout + done.stderr and "custom code" not in done.stdout + done.stderr
    assert done.stdout.split()[-1] == str(len(AutoTokenizer.from_pretrained(folder)))


# ---------------------------------------------------------------------------------------------------------------------
# Every folder training leaves: each checkpoint-N/ and the saved judge, with the trainer's rewards at that step
# ---------------------------------------------------------------------------------------------------------------------

RUNS = {  # name: (AdaJudgeRewardConfig fields, LoRA); two checkpoints each
    "lora": (dict(save_form="full"), True),  # checkpoints adapter + heads, the saved judge merged
    "lora, model only": (dict(save_only_model=True), True),
    "full fine-tune": (dict(), False),
    "frozen backbone, model only": (dict(freeze_backbone=True, save_only_model=True), False),
}
TRL_DOORS = (*DOORS, "TRL reward model", "adajudge serve")


class RewardsAtEachSave(TrainerCallback):
    """A copy of the trainer's model at every save (the judge at that step) and its rewards on `CHATS`."""

    def __init__(self, tokenizer):
        self.tokenizer, self.models, self.rewards = tokenizer, {}, {}

    def on_save(self, args, state, control, model=None, **kwargs):
        snapshot = copy.deepcopy(model).eval()
        self.models[state.global_step], self.rewards[state.global_step] = snapshot, rewards(snapshot, self.tokenizer)


def train_run(backbone: Path, output_dir: Path, fields: dict, lora: bool, resume: Path | None = None):
    args = AdaJudgeRewardConfig(
        str(output_dir),
        per_device_train_batch_size=2,
        max_steps=2,
        save_strategy="steps",
        save_steps=1,
        learning_rate=5e-2,
        bf16=False,
        use_cpu=True,
        report_to="none",
        disable_tqdm=True,
        activation_checkpointing=False,
        model_init_kwargs={"num_refinement_blocks": 1, "head_hidden_size": 8},
        **fields,
    )
    tokenizer = AutoTokenizer.from_pretrained(backbone)
    pairs = Dataset.from_list(
        [
            {"prompt": chat[:1], "chosen": chat[1:], "rejected": [{"role": "assistant", "content": f"no {i}"}]}
            for i, chat in enumerate(CHATS * 4)
        ]
    )
    saves = RewardsAtEachSave(tokenizer)
    trainer = AdaJudgeRewardTrainer(
        str(backbone),
        args,
        train_dataset=pairs,
        peft_config=LoraConfig(r=4, lora_alpha=8) if lora else None,
        callbacks=[saves],
    )
    trainer.train(resume_from_checkpoint=None if resume is None else str(resume))
    return trainer, saves


@pytest.fixture(scope="module")
def training_runs(tmp_path_factory) -> dict:
    """{run: (output folder, the trainer, the judge at each save)}, each run saving checkpoint-1 and checkpoint-2."""
    root = tmp_path_factory.mktemp("runs")
    backbone = save_tiny_causal_lm(root / "backbone")
    return {
        name: (root / str(i), *train_run(backbone, root / str(i), fields, lora))
        for i, (name, (fields, lora)) in enumerate(RUNS.items())
    }


def open_door(door: str, folder: Path):
    if door == "TRL reward model":  # the loading call of TRL's string arguments (GRPOTrainer, RewardTrainer)
        return AutoModelForSequenceClassification.from_pretrained(str(folder), num_labels=1)
    if door == "adajudge serve":
        from adajudge_hf.serve import load_for_serving

        return load_for_serving(str(folder), device="cpu", dtype="float32").model
    return open_by(door, str(folder))


def assert_opens_as(folder: Path, expected: torch.Tensor, doors=TRL_DOORS) -> None:
    tokenizer = AutoTokenizer.from_pretrained(folder)
    for door in doors:
        model = open_door(door, folder)
        assert isinstance(model, AdaJudgeForRewardModeling), (door, type(model).__name__)
        torch.testing.assert_close(rewards(model, tokenizer), expected, rtol=0, atol=1e-5, msg=f"{folder}, {door}")


@pytest.mark.slow
@pytest.mark.parametrize("run", RUNS)
def test_every_checkpoint_opens_through_every_door_as_the_judge_at_that_step(training_runs, run):
    output_dir, trainer, saves = training_runs[run]
    assert sorted(saves.rewards) == [1, 2]
    assert not torch.allclose(saves.rewards[1], saves.rewards[2], atol=1e-3)  # the steps differ: no mix-up passes
    for step, expected in saves.rewards.items():
        assert_opens_as(output_dir / f"checkpoint-{step}", expected)


@pytest.mark.slow
@pytest.mark.parametrize("run", RUNS)
def test_the_saved_judge_and_the_evaluate_cli_give_the_trainers_rewards(training_runs, run, tmp_path):
    """`save_model` into the output folder keeps the checkpoints; `adajudge evaluate` on a checkpoint scores like the
    trainer's model at that step."""
    output_dir, trainer, saves = training_runs[run]
    trainer.save_model()
    assert_opens_as(output_dir, saves.rewards[2])
    assert {path.name for path in output_dir.glob("checkpoint-*")} == {"checkpoint-1", "checkpoint-2"}
    expected_form = {"lora": "full", "lora, model only": "adapter"}.get(run)
    if expected_form is not None:
        assert detect_judge_form(output_dir) == expected_form

    data = write_pairs(tmp_path / "pairs.jsonl")
    judge = saves.models[1]
    judge = judge.merge_and_unload() if isinstance(judge, PeftModel) else judge
    tokenizer = AutoTokenizer.from_pretrained(output_dir / "checkpoint-1")
    evaluate_model(judge, tokenizer, "pairs", data, tmp_path / "expected", show_progress=False)
    args = ["--benchmark", "pairs", "--data", str(data), "--output-dir", str(tmp_path / "cli"), "--dtype", "float32"]
    assert evaluate_main(["--model", str(output_dir / "checkpoint-1"), *args]) == 0
    for want, got in zip(*(map(json.loads, (tmp_path / d / "rewards.jsonl").read_text().splitlines())
                           for d in ("expected", "cli"))):  # fmt: skip
        assert got["score_chosen"] == pytest.approx(want["score_chosen"], abs=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("run", ["lora", "full fine-tune"])
def test_a_resumed_run_saves_the_same_judge_as_the_straight_run(training_runs, run, tmp_path):
    output_dir, _, saves = training_runs[run]
    fields, lora = RUNS[run]
    backbone = output_dir.parent / "backbone"
    _, resumed = train_run(backbone, tmp_path / "resumed", fields, lora, resume=output_dir / "checkpoint-1")
    assert sorted(resumed.rewards) == [2]
    torch.testing.assert_close(resumed.rewards[2], saves.rewards[2], rtol=0, atol=1e-5)
    assert_opens_as(tmp_path / "resumed" / "checkpoint-2", saves.rewards[2])


@pytest.mark.slow
def test_grpo_takes_a_lora_checkpoint_as_the_judge_at_that_step(training_runs, tmp_path):
    output_dir, _, saves = training_runs["lora"]
    checkpoint = output_dir / "checkpoint-1"
    policy = save_tiny_causal_lm(tmp_path / "policy", seed=1)
    grpo = GRPOTrainer(
        model=str(policy),
        reward_funcs=str(checkpoint),
        args=GRPOConfig(
            output_dir=str(tmp_path / "grpo"),
            use_cpu=True,
            bf16=False,
            report_to="none",
            save_strategy="no",
            per_device_train_batch_size=2,
            num_generations=2,
            max_completion_length=4,
        ),  # fmt: skip
        train_dataset=Dataset.from_dict({"prompt": [[{"role": "user", "content": "Hi?"}]] * 2}),
    )
    reward_model, reward_tokenizer = grpo.reward_funcs[0], grpo.reward_processing_classes[0]
    assert isinstance(reward_model, AdaJudgeForRewardModeling)
    torch.testing.assert_close(rewards(reward_model, reward_tokenizer), saves.rewards[1], rtol=0, atol=1e-5)


@pytest.mark.slow
def test_a_checkpoint_pushes_without_its_trainer_state_and_loads_by_repo_id(training_runs, hub, monkeypatch):
    output_dir, _, saves = training_runs["lora"]
    checkpoint = output_dir / "checkpoint-1"
    assert (checkpoint / "optimizer.pt").is_file()  # Trainer's resume state sits beside the judge
    api = HfApi(token=hub.token)
    api.create_repo(BACKBONE_REPO)
    api.upload_folder(folder_path=output_dir.parent / "backbone", repo_id=BACKBONE_REPO)
    push_judge(checkpoint, "org/judge-step-1", token=hub.token, base_model=BACKBONE_REPO)
    uploaded = set(hub.files("org/judge-step-1"))
    assert not uploaded & {"optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json", "training_args.bin"}
    snapshot_download("org/judge-step-1")
    snapshot_download(BACKBONE_REPO)
    go_offline(hub, monkeypatch)
    for door in ("AutoModelForSequenceClassification", "load_judge"):
        opened = open_by(door, "org/judge-step-1")
        tokenizer = AutoTokenizer.from_pretrained("org/judge-step-1")
        torch.testing.assert_close(rewards(opened, tokenizer), saves.rewards[1], rtol=0, atol=1e-5, msg=door)
