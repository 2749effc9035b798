"""Save forms (adapter + heads, heads, full): identical rewards on reload, strict heads, atomic writes."""

import json

import pytest
import torch
from conftest import randomize_head, with_random_lora
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import adajudge_hf.checkpoint as checkpoint
from adajudge_hf import AdaJudgeForRewardModeling
from adajudge_hf.checkpoint import HEADS_FILE, atomic_folder, detect_judge_form, load_judge, save_judge
from adajudge_hf.testing import save_tiny_causal_lm


@pytest.fixture(scope="module")
def backbone_dir(tmp_path_factory):
    return save_tiny_causal_lm(tmp_path_factory.mktemp("backbone"))


def new_judge(backbone_dir, lora=False):
    torch.manual_seed(0)
    judge = randomize_head(
        AdaJudgeForRewardModeling.from_backbone(backbone_dir, num_refinement_blocks=2, head_hidden_size=16)
    )
    if not lora:
        return judge.eval()
    return with_random_lora(judge)


def rewards(model):
    generator = torch.Generator().manual_seed(2)
    input_ids = torch.randint(3, 300, (3, 14), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 10:] = 0
    with torch.no_grad():
        return model(input_ids=input_ids, attention_mask=attention_mask, prompt_lengths=torch.tensor([4, 3, 6])).logits


@pytest.mark.parametrize("form, lora", [("adapter", True), ("heads", False), ("full", False), ("full", True)])
def test_every_form_reloads_to_identical_rewards(backbone_dir, tmp_path, tiny_tokenizer, form, lora):
    model = new_judge(backbone_dir, lora=lora)
    expected = rewards(model)
    folder = save_judge(model, tmp_path / "judge", form=form, tokenizer=tiny_tokenizer)
    assert detect_judge_form(folder) == form
    loaded = load_judge(folder)
    assert isinstance(loaded, AdaJudgeForRewardModeling) and not loaded.training
    torch.testing.assert_close(rewards(loaded), expected, rtol=0, atol=1e-6)
    assert (folder / "tokenizer_config.json").is_file()
    if lora:  # saving merged a copy: the model being trained still has its adapters
        assert any("lora_A" in name for name, _ in model.named_parameters())


def test_adapter_form_keeps_lora_and_heads_apart(backbone_dir, tmp_path):
    folder = save_judge(new_judge(backbone_dir, lora=True), tmp_path / "judge", form="adapter")
    with safe_open(folder / "adapter_model.safetensors", "pt") as adapter:
        keys = list(adapter.keys())
    assert keys and all("lora_" in key for key in keys) and not any("judge_head" in key for key in keys)
    adapter_config = json.loads((folder / "adapter_config.json").read_text())
    assert adapter_config["modules_to_save"] is None
    assert adapter_config["base_model_name_or_path"] == str(backbone_dir.resolve())
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "adajudge" and config["base_model_name_or_path"] == str(backbone_dir.resolve())
    heads = load_file(folder / HEADS_FILE)
    assert "expert_heads.last.0.weight" in heads and "pooling_router.2.weight" in heads


@pytest.mark.parametrize("form", ["adapter", "heads"])
def test_adapter_and_heads_forms_carry_no_remote_code(backbone_dir, tmp_path, form):
    """No `auto_map` and no code files: a `config.json` naming remote code makes transformers ask whether to run it
    whenever a process without the package reads the folder, even for its tokenizer."""
    folder = save_judge(new_judge(backbone_dir, lora=form == "adapter"), tmp_path / "judge", form=form)
    assert "auto_map" not in json.loads((folder / "config.json").read_text())
    assert not list(folder.glob("*.py"))


def test_full_form_is_a_standalone_checkpoint(backbone_dir, tmp_path):
    folder = save_judge(new_judge(backbone_dir, lora=True), tmp_path / "judge", form="full")
    assert {"config.json", "model.safetensors", "configuration_adajudge.py", "modeling_adajudge.py"} <= {
        path.name for path in folder.iterdir()
    }
    with safe_open(folder / "model.safetensors", "pt") as weights:
        keys = list(weights.keys())
    assert not any("lora_" in key or "base_layer" in key or "modules_to_save" in key for key in keys)


def test_forms_that_would_lose_training_are_refused(backbone_dir, tmp_path):
    with pytest.raises(ValueError, match="has none"):
        save_judge(new_judge(backbone_dir), tmp_path / "a", form="adapter")
    with pytest.raises(ValueError, match="drop the trained LoRA"):
        save_judge(new_judge(backbone_dir, lora=True), tmp_path / "b", form="heads")
    with pytest.raises(ValueError, match="form"):
        save_judge(new_judge(backbone_dir), tmp_path / "c", form="merged")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_judge_with_an_unknown_backbone_needs_it_named(make_judge, backbone_dir, tmp_path):
    with pytest.raises(ValueError, match="base_model_name_or_path"):
        save_judge(make_judge(), tmp_path / "judge", form="heads")
    folder = save_judge(make_judge(), tmp_path / "judge", form="heads", base_model_name_or_path=str(backbone_dir))
    assert json.loads((folder / "config.json").read_text())["base_model_name_or_path"] == str(backbone_dir.resolve())


def test_missing_or_broken_heads_are_an_error_never_random_heads(backbone_dir, tmp_path):
    folder = save_judge(new_judge(backbone_dir, lora=True), tmp_path / "judge", form="adapter")
    heads = load_file(folder / HEADS_FILE)
    (folder / HEADS_FILE).unlink()
    with pytest.raises(ValueError, match="randomly initialised heads"):
        load_judge(folder)
    broken = {**heads, "pooling_router.2.weight": torch.full_like(heads["pooling_router.2.weight"], float("nan"))}
    save_file(broken, folder / HEADS_FILE)
    with pytest.raises(ValueError, match=r"judge_head.safetensors has NaN or Inf values in 1 tensor\(s\): pooling"):
        load_judge(folder)
    save_file({k: v for k, v in heads.items() if not k.startswith("expert_heads.mean")}, folder / HEADS_FILE)
    with pytest.raises(ValueError, match="missing"):
        load_judge(folder)

    full = save_judge(new_judge(backbone_dir), tmp_path / "full", form="full")
    weights = load_file(full / "model.safetensors")
    save_file(
        {k: v for k, v in weights.items() if not k.startswith("judge_head.expert_heads")}, full / "model.safetensors"
    )
    with pytest.raises(ValueError, match=r"missing 12 weight\(s\) of the judge.*meaningless rewards"):
        load_judge(full)
    with pytest.raises(ValueError, match="not an AdaJudge judge"):
        load_judge(backbone_dir)


def test_heads_form_loads_onto_another_copy_of_the_backbone(backbone_dir, tmp_path):
    model = new_judge(backbone_dir)
    folder = save_judge(model, tmp_path / "judge", form="heads")
    copy_dir = save_tiny_causal_lm(tmp_path / "backbone-copy")  # same seed: the same weights elsewhere
    loaded = load_judge(folder, base_model_name_or_path=str(copy_dir))
    assert loaded.config.base_model_name_or_path == str(copy_dir)
    torch.testing.assert_close(rewards(loaded), rewards(model), rtol=0, atol=1e-6)


def test_a_crash_while_saving_leaves_the_previous_folder_intact(backbone_dir, tmp_path, monkeypatch):
    model = new_judge(backbone_dir)
    folder = save_judge(model, tmp_path / "judge", form="heads")
    before = {path.name: path.read_bytes() for path in folder.iterdir()}
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_judge(model, folder, form="heads")

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "save_file", crash)
    with torch.no_grad():
        model.judge_head.pooling_router[2].weight.add_(1.0)
    with pytest.raises(OSError, match="disk full"):
        save_judge(model, folder, form="heads", overwrite=True)
    assert {path.name: path.read_bytes() for path in folder.iterdir()} == before
    assert [path.name for path in tmp_path.iterdir()] == ["judge"]  # no staging folder left behind

    monkeypatch.undo()
    save_judge(model, folder, form="heads", overwrite=True)
    torch.testing.assert_close(rewards(load_judge(folder)), rewards(model), rtol=0, atol=1e-6)
    assert [path.name for path in tmp_path.iterdir()] == ["judge"]


def test_atomic_folder_refuses_a_file_and_creates_parents(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError):
        with atomic_folder(tmp_path / "file"):
            pass
    with atomic_folder(tmp_path / "a" / "b") as staging:
        (staging / "x.txt").write_text("done")
    assert (tmp_path / "a" / "b" / "x.txt").read_text() == "done"


@pytest.mark.parametrize("first, then, lora", [("full", "adapter", True), ("adapter", "heads", False)])
def test_saving_into_a_folder_with_other_files_keeps_them_and_replaces_the_judge(backbone_dir, tmp_path, first,
                                                                                  then, lora):  # fmt: skip
    """A Trainer output folder (checkpoints, logs) takes the judge's files; a new form leaves no file of the old."""
    folder = tmp_path / "run"
    (folder / "checkpoint-1").mkdir(parents=True)
    (folder / "checkpoint-1" / "optimizer.pt").write_bytes(b"state")
    (folder / "trainer_state.json").write_text("{}")
    first_model = new_judge(backbone_dir, lora=True) if first == "adapter" else new_judge(backbone_dir)
    save_judge(first_model, folder, form=first, keep_other_files=True)
    model = new_judge(backbone_dir, lora=lora)
    randomize_head(model.get_base_model() if lora else model, seed=5)
    save_judge(model, folder, form=then, keep_other_files=True)
    assert (folder / "checkpoint-1" / "optimizer.pt").read_bytes() == b"state" and (
        folder / "trainer_state.json"
    ).exists()
    assert detect_judge_form(folder) == then and not list(tmp_path.glob(".run.*"))
    torch.testing.assert_close(rewards(load_judge(folder)), rewards(model), rtol=0, atol=1e-6)


@pytest.mark.parametrize("form, lora", [("adapter", True), ("heads", False)])
def test_load_judge_weights_restores_a_model_being_trained(backbone_dir, tmp_path, form, lora):
    saved = new_judge(backbone_dir, lora=lora)
    folder = save_judge(saved, tmp_path / "judge", form=form)
    other = new_judge(backbone_dir, lora=lora)  # same backbone, other heads and adapters
    judge = other.get_base_model() if lora else other
    randomize_head(judge, seed=7)
    if lora:
        with torch.no_grad():
            for name, parameter in other.named_parameters():
                if "lora_B" in name:
                    parameter.add_(1.0)
    assert not torch.allclose(rewards(other), rewards(saved))
    checkpoint.load_judge_weights(other, folder)
    torch.testing.assert_close(rewards(other), rewards(saved), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="resume it with the same LoRA setting"):
        checkpoint.load_judge_weights(new_judge(backbone_dir, lora=not lora), folder)


def test_a_failed_save_into_a_trainer_folder_changes_nothing(backbone_dir, tmp_path, monkeypatch):
    folder = tmp_path / "run"
    save_judge(new_judge(backbone_dir), folder, form="heads", keep_other_files=True)
    (folder / "optimizer.pt").write_bytes(b"state")
    before = {path.name: path.read_bytes() for path in folder.iterdir()}

    def disk_full(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(checkpoint, "save_file", disk_full)
    with pytest.raises(OSError, match="No space left"):
        save_judge(new_judge(backbone_dir, lora=True), folder, form="adapter", keep_other_files=True)
    assert {path.name: path.read_bytes() for path in folder.iterdir()} == before
    assert not list(tmp_path.glob(".run.*"))


def test_a_bare_peft_checkpoint_is_refused_saying_what_it_is_and_how_to_open_it(backbone_dir, tmp_path):
    """Trainer's stock PEFT checkpoint (an older version's `checkpoint-N/`): no judge config.json beside the adapter."""
    new_judge(backbone_dir, lora=True).save_pretrained(tmp_path / "checkpoint-12")
    with pytest.raises(ValueError, match=r"is a bare PEFT adapter without the judge's config.json .* Open it with "
                                         r"`PeftModel.from_pretrained\(AdaJudgeForRewardModeling.from_backbone"):  # fmt: skip
        load_judge(tmp_path / "checkpoint-12")
