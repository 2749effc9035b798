"""AdaJudgeRewardTrainer: TRL equivalence, learning, entropy floor, LoRA / frozen backbone, learning rates,
non-finite guards, resume, model loading and bad input."""

import logging
import random
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch
from conftest import WORDS, loss_logs, randomize_head, run_script, synthetic_pairs
from datasets import Dataset, IterableDataset
from peft import LoraConfig, PeftModel, get_peft_model_state_dict
from safetensors.torch import load_file
from trl import RewardConfig, RewardTrainer

from adajudge_hf import AdaJudgeForRewardModeling
from adajudge_hf.checkpoint import detect_judge_form, load_judge, save_judge
from adajudge_hf.lora import BACKBONE_TARGET_MODULES, adajudge_lora_config
from adajudge_hf.testing import free_port, make_tiny_judge, save_tiny_causal_lm
from adajudge_hf.trainer import AdaJudgeRewardConfig, AdaJudgeRewardTrainer, NonFiniteLossError


SHORT_BATCH_SEED = 3


def unequal_pairs(n: int, seed: int = 0) -> Dataset:
    """Long prompts, short chosen and long rejected answers: at a small `max_length` the prompts must be cut."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        rows.append(
            {
                "prompt": [{"role": "user", "content": " ".join(rng.choices(WORDS, k=rng.randint(16, 24))) + "?"}],
                "chosen": [{"role": "assistant", "content": " ".join(rng.choices(WORDS, k=rng.randint(1, 3)))}],
                "rejected": [{"role": "assistant", "content": " ".join(rng.choices(WORDS, k=rng.randint(8, 14)))}],
            }
        )
    return Dataset.from_list(rows)


def make_args(output_dir, **kwargs) -> AdaJudgeRewardConfig:
    defaults = dict(
        per_device_train_batch_size=4,
        max_steps=2,
        learning_rate=1e-3,
        logging_steps=1,
        save_strategy="no",
        bf16=False,
        use_cpu=True,
        report_to="none",
        disable_tqdm=True,
        activation_checkpointing=False,
    )
    return AdaJudgeRewardConfig(str(output_dir), **{**defaults, **kwargs})


def new_judge(tokenizer, seed: int = 0, **config_kwargs) -> AdaJudgeForRewardModeling:
    return make_tiny_judge(tokenizer, seed, **config_kwargs).train()


def judge_on_backbone(folder: Path, seed: int = 0) -> AdaJudgeForRewardModeling:
    """A tiny judge around a saved backbone: its adapter and heads forms (LoRA and frozen-backbone checkpoints) name
    that folder."""
    backbone = folder if (folder / "config.json").exists() else save_tiny_causal_lm(folder)
    torch.manual_seed(seed)
    return AdaJudgeForRewardModeling.from_backbone(backbone, num_refinement_blocks=1, head_hidden_size=8)


def head_state(model) -> dict[str, torch.Tensor]:
    judge = model.get_base_model() if isinstance(model, PeftModel) else model
    head = judge.judge_head
    head = head.modules_to_save["default"] if hasattr(head, "modules_to_save") else head
    return {name: tensor.detach().clone() for name, tensor in head.state_dict().items()}


def test_stock_objective_reproduces_trls_loss_exactly(tiny_tokenizer, tmp_path):
    dataset = synthetic_pairs(8, margin=[0.0, 0.5, -0.5, 1.0] * 2)
    args = make_args(tmp_path, focal_gamma=0.0, entropy_floor_coef=0.0)
    trainer = AdaJudgeRewardTrainer(
        new_judge(tiny_tokenizer), args, train_dataset=dataset, processing_class=tiny_tokenizer
    )
    batch = next(iter(trainer.get_train_dataloader()))
    assert {"prompt_lengths", "margin"} <= batch.keys()  # the boundary survives TRL's column removal
    ours = trainer.compute_loss(trainer.model, dict(batch))
    stock = RewardTrainer.compute_loss(trainer, trainer.model, dict(batch))
    assert torch.equal(ours, stock)


def test_loss_hyperparameters_come_from_the_model_unless_overridden(tiny_tokenizer, tmp_path):
    judge = new_judge(tiny_tokenizer, focal_gamma=1.0, entropy_floor=0.3)
    trainer = AdaJudgeRewardTrainer(
        judge, make_args(tmp_path), train_dataset=synthetic_pairs(4), processing_class=tiny_tokenizer
    )
    assert trainer.loss_hyperparameters == {
        "bt_temperature": 1.0,
        "focal_gamma": 1.0,
        "entropy_floor": 0.3,
        "entropy_floor_coef": 0.1,
    }
    args = make_args(tmp_path, focal_gamma=0.5, bt_temperature=2.0)
    trainer = AdaJudgeRewardTrainer(judge, args, train_dataset=synthetic_pairs(4), processing_class=tiny_tokenizer)
    assert trainer.loss_hyperparameters["focal_gamma"] == 0.5 and trainer.loss_hyperparameters["entropy_floor"] == 0.3
    assert (judge.config.focal_gamma, judge.config.bt_temperature) == (0.5, 2.0)  # recorded with the checkpoint
    with pytest.raises(ValueError, match="entropy_floor"):
        make_args(tmp_path, entropy_floor=1.2)
    with pytest.raises(ValueError, match="router_learning_rate_multiplier"):
        make_args(tmp_path, router_learning_rate_multiplier=0.0)


def test_training_logs_trls_metrics_and_the_routing(tiny_tokenizer, tmp_path):
    args = make_args(tmp_path, eval_strategy="steps", eval_steps=2, per_device_eval_batch_size=4)
    dataset = synthetic_pairs(8)
    trainer = AdaJudgeRewardTrainer(
        new_judge(tiny_tokenizer), args, train_dataset=dataset, eval_dataset=dataset, processing_class=tiny_tokenizer
    )
    trainer.train()
    train_logs = [log for log in trainer.state.log_history if "loss" in log]
    trl_metrics = {"accuracy", "margin", "min_reward", "mean_reward", "max_reward", "num_tokens"}
    routing_metrics = {
        "router_entropy",
        "entropy_floor_active",
        "pi/last",
        "pi/mean",
        "pi/attention",
        "alpha/H(1)",
        "alpha/H(2)",
    }
    expected = trl_metrics | routing_metrics
    assert expected <= train_logs[0].keys()
    assert sum(train_logs[0][f"pi/{expert}"] for expert in ("last", "mean", "attention")) == pytest.approx(1.0)
    evaluation = trainer.evaluate()
    assert {f"eval_{key}" for key in expected - {"num_tokens"}} <= evaluation.keys()


def test_eval_accuracy_is_over_pairs_even_with_a_short_last_batch(tiny_tokenizer, tmp_path):
    dataset = synthetic_pairs(5, seed=SHORT_BATCH_SEED)
    judge = new_judge(tiny_tokenizer, seed=SHORT_BATCH_SEED).eval()

    def trainer_with(eval_batch_size: int) -> AdaJudgeRewardTrainer:
        args = make_args(tmp_path, per_device_eval_batch_size=eval_batch_size)
        return AdaJudgeRewardTrainer(
            judge, args, train_dataset=dataset, eval_dataset=dataset, processing_class=tiny_tokenizer
        )

    whole = trainer_with(5)
    with torch.no_grad():
        batch = whole._prepare_inputs(next(iter(whole.get_eval_dataloader())))
        chosen, rejected = whole.compute_loss(judge, batch, return_outputs=True)[1].logits.squeeze(-1).chunk(2)
    correct = (chosen > rejected).float().tolist()
    batch_means = [sum(correct[i : i + 2]) / len(correct[i : i + 2]) for i in (0, 2, 4)]
    assert sum(batch_means) / 3 != pytest.approx(sum(correct) / 5)  # batches of 2, 2, 1: the two means differ here
    assert trainer_with(2).evaluate()["eval_accuracy"] == pytest.approx(sum(correct) / 5)


def test_load_best_model_at_end_restores_the_best_adapter_and_heads(tiny_tokenizer, tmp_path):
    # `num_tokens` (training tokens seen) only grows: selecting its smallest value makes the first checkpoint the
    # best one, not the last.
    args = make_args(
        tmp_path,
        max_steps=2,
        eval_strategy="steps",
        eval_steps=1,
        save_strategy="steps",
        save_steps=1,
        load_best_model_at_end=True,
        metric_for_best_model="num_tokens",
        greater_is_better=False,
    )
    trainer = AdaJudgeRewardTrainer(
        judge_on_backbone(tmp_path / "backbone"),
        args,
        train_dataset=synthetic_pairs(12),
        eval_dataset=synthetic_pairs(4, seed=1),
        processing_class=tiny_tokenizer,
        peft_config=LoraConfig(r=4),
    )
    trainer.train()
    assert Path(trainer.state.best_model_checkpoint).name == "checkpoint-1"
    current, heads = get_peft_model_state_dict(trainer.model), head_state(trainer.model)
    best, last = (load_file(tmp_path / f"checkpoint-{step}" / "adapter_model.safetensors") for step in (1, 2))
    assert best.keys() <= current.keys() and all("lora_" in key for key in best)
    assert all(torch.equal(current[key], best[key]) for key in best)
    assert not all(torch.equal(current[key], last[key]) for key in last)
    best_heads = load_file(tmp_path / "checkpoint-1" / "judge_head.safetensors")
    assert all(torch.equal(heads[key], best_heads[key]) for key in best_heads)


def test_tiny_judge_learns_a_synthetic_preference_and_the_entropy_floor_holds(tiny_tokenizer, tmp_path):
    dataset = synthetic_pairs(64)
    entropies = {}
    for coef in (0.0, 5.0):
        args = make_args(
            tmp_path / str(coef),
            max_steps=32,
            per_device_train_batch_size=8,
            learning_rate=3e-3,
            lr_scheduler_type="constant",
            focal_gamma=2.0,
            entropy_floor=1.0,
            entropy_floor_coef=coef,
        )
        trainer = AdaJudgeRewardTrainer(
            new_judge(tiny_tokenizer), args, train_dataset=dataset, processing_class=tiny_tokenizer
        )
        trainer.train()
        metrics = trainer.evaluate(dataset)
        assert metrics["eval_accuracy"] >= 0.95, metrics
        entropies[coef] = metrics["eval_router_entropy"]
    assert entropies[5.0] >= 1.0 - 0.05  # the floor holds ...
    assert entropies[0.0] < entropies[5.0] - 0.1  # ... where the router would otherwise concentrate


def test_lora_adapts_the_backbone_only_and_trains_the_heads(tiny_tokenizer, tmp_path):
    judge = new_judge(tiny_tokenizer)
    backbone_before = {name: tensor.clone() for name, tensor in judge.model.state_dict().items()}
    heads_before = head_state(judge)
    args = make_args(tmp_path, max_steps=3, activation_checkpointing=True)  # TRL's default, with PEFT
    trainer = AdaJudgeRewardTrainer(
        judge, args, train_dataset=synthetic_pairs(12), processing_class=tiny_tokenizer, peft_config=LoraConfig(r=4)
    )
    model = trainer.model
    assert isinstance(model, PeftModel)
    assert model.peft_config["default"].target_modules == BACKBONE_TARGET_MODULES
    lora_modules = [name for name, _ in model.named_modules() if name.endswith("lora_A")]
    assert lora_modules and not any("judge_head" in name for name in lora_modules)
    lora_b = {name: p.detach().clone() for name, p in model.named_parameters() if "lora_B" in name}
    trainer.train()

    heads_after = head_state(model)
    assert all(not torch.equal(heads_before[name], heads_after[name]) for name in heads_after if "norm" not in name)
    assert any(not torch.equal(lora_b[name], p) for name, p in model.named_parameters() if "lora_B" in name)
    base = model.get_base_model().model
    for name, tensor in base.state_dict().items():
        if "lora_" not in name:
            assert torch.equal(tensor, backbone_before[name.replace(".base_layer", "")]), name


@pytest.mark.parametrize(
    "lora_kwargs, match",
    [({"target_modules": "all-linear"}, "all-linear"), ({"target_modules": ["q_proj", "ffn_out"]}, "heads")],
)
def test_lora_targets_on_the_heads_are_refused(tiny_tokenizer, tmp_path, lora_kwargs, match):
    peft_config = LoraConfig(r=4, **lora_kwargs)
    with pytest.raises(ValueError, match=match):
        AdaJudgeRewardTrainer(
            new_judge(tiny_tokenizer), make_args(tmp_path), train_dataset=synthetic_pairs(4), peft_config=peft_config
        )


def test_a_peft_model_with_frozen_heads_is_refused(tiny_tokenizer, tmp_path):
    from peft import get_peft_model

    judge = new_judge(tiny_tokenizer)
    frozen = get_peft_model(judge, LoraConfig(r=4, target_modules=BACKBONE_TARGET_MODULES))
    with pytest.raises(ValueError, match="judge_head` is frozen"):
        AdaJudgeRewardTrainer(
            frozen, make_args(tmp_path), train_dataset=synthetic_pairs(4), processing_class=tiny_tokenizer
        )
    wrapped = get_peft_model(
        new_judge(tiny_tokenizer), adajudge_lora_config(LoraConfig(r=4), new_judge(tiny_tokenizer))
    )
    trainer = AdaJudgeRewardTrainer(
        wrapped, make_args(tmp_path), train_dataset=synthetic_pairs(4), processing_class=tiny_tokenizer
    )
    assert trainer.model is wrapped


def test_frozen_backbone_trains_the_heads_only(tiny_tokenizer, tmp_path):
    judge = new_judge(tiny_tokenizer)
    backbone_before = {name: tensor.clone() for name, tensor in judge.model.state_dict().items()}
    heads_before = head_state(judge)
    args = make_args(tmp_path, freeze_backbone=True, activation_checkpointing=None, gradient_checkpointing=True)
    assert not args.activation_checkpointing  # recomputing a frozen backbone buys nothing
    trainer = AdaJudgeRewardTrainer(judge, args, train_dataset=synthetic_pairs(8), processing_class=tiny_tokenizer)
    trainer.train()
    assert all(torch.equal(tensor, backbone_before[name]) for name, tensor in judge.model.state_dict().items())
    assert any(not torch.equal(heads_before[name], tensor) for name, tensor in head_state(judge).items())
    with pytest.raises(ValueError, match="freeze_backbone"):
        AdaJudgeRewardTrainer(
            new_judge(tiny_tokenizer), args, train_dataset=synthetic_pairs(4), peft_config=LoraConfig()
        )


def test_heads_router_and_adapters_get_their_own_learning_rates(tiny_tokenizer, tmp_path):
    args = make_args(tmp_path, learning_rate=1e-4, head_learning_rate=1e-3, router_learning_rate_multiplier=10.0)
    trainer = AdaJudgeRewardTrainer(
        new_judge(tiny_tokenizer),
        args,
        train_dataset=synthetic_pairs(4),
        processing_class=tiny_tokenizer,
        peft_config=LoraConfig(r=4),
    )
    optimizer = trainer.create_optimizer()
    names = {id(p): name for name, p in trainer.model.named_parameters()}
    learning_rates = {}
    for group in optimizer.param_groups:
        for parameter in group["params"]:
            learning_rates[names[id(parameter)]] = group["lr"]
    assert learning_rates and len(learning_rates) == sum(p.requires_grad for p in trainer.model.parameters())
    for name, lr in learning_rates.items():
        if "pooling_router" in name:
            assert lr == pytest.approx(1e-2), name
        elif "judge_head" in name:
            assert lr == pytest.approx(1e-3), name
        else:
            assert "lora_" in name and lr == pytest.approx(1e-4), name


def test_a_nan_loss_stops_training_before_a_checkpoint_holds_it(tiny_tokenizer, tmp_path):
    judge = new_judge(tiny_tokenizer)
    calls = []

    def poison_from_the_second_step(module, inputs, outputs):
        calls.append(1)
        if len(calls) >= 2:
            return (outputs[0] * float("nan"),) + tuple(outputs[1:])

    judge.judge_head.register_forward_hook(poison_from_the_second_step)
    args = make_args(tmp_path, max_steps=4, save_strategy="steps", save_steps=1)
    trainer = AdaJudgeRewardTrainer(judge, args, train_dataset=synthetic_pairs(16), processing_class=tiny_tokenizer)
    with pytest.raises(NonFiniteLossError, match="Non-finite train loss .* at step 1"):
        trainer.train()
    assert sorted(path.name for path in tmp_path.glob("checkpoint-*")) == ["checkpoint-1"]
    weights = load_file(tmp_path / "checkpoint-1" / "model.safetensors")
    assert all(torch.isfinite(tensor).all() for tensor in weights.values())
    assert all(torch.isfinite(p).all() for p in judge.parameters())


def test_a_nan_gradient_stops_training_before_the_optimizer_step(tiny_tokenizer, tmp_path):
    judge = new_judge(tiny_tokenizer)
    before = {name: p.detach().clone() for name, p in judge.named_parameters()}
    judge.judge_head.expert_heads["last"][0].weight.register_hook(lambda grad: grad * float("nan"))
    trainer = AdaJudgeRewardTrainer(
        judge, make_args(tmp_path), train_dataset=synthetic_pairs(8), processing_class=tiny_tokenizer
    )
    with pytest.raises(NonFiniteLossError, match="gradient norm"):
        trainer.train()
    assert all(torch.equal(p, before[name]) for name, p in judge.named_parameters())


@pytest.mark.parametrize("lora", [False, True])
def test_resume_from_checkpoint_reaches_the_same_final_weights(tiny_tokenizer, tmp_path, lora):
    dataset = synthetic_pairs(16)
    args = make_args(tmp_path, max_steps=4, save_strategy="steps", save_steps=2, head_learning_rate=3e-3)
    peft_config = LoraConfig(r=4) if lora else None
    straight = AdaJudgeRewardTrainer(
        judge_on_backbone(tmp_path / "backbone") if lora else new_judge(tiny_tokenizer),
        args,
        train_dataset=dataset,
        peft_config=peft_config,
        processing_class=tiny_tokenizer,
    )
    straight.train()
    # A full checkpoint restores every weight, so start from other random weights; LoRA needs the same backbone (its
    # checkpoints hold the adapters and heads), so start from other random heads.
    fresh = judge_on_backbone(tmp_path / "backbone", seed=1) if lora else new_judge(tiny_tokenizer, seed=1)
    resumed = AdaJudgeRewardTrainer(
        fresh, args, train_dataset=dataset, peft_config=peft_config, processing_class=tiny_tokenizer
    )
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))

    final, again = straight.model.state_dict(), resumed.model.state_dict()
    assert final.keys() == again.keys()
    for name in [name for name in final if ".original_module." not in name]:  # PEFT's untrained copy of the heads
        torch.testing.assert_close(again[name], final[name], rtol=0, atol=1e-6, msg=name)
    assert straight.state.log_history[-2]["loss"] == pytest.approx(resumed.state.log_history[-2]["loss"], abs=1e-6)


@pytest.mark.parametrize(
    "kwargs, lora, match",
    [
        (dict(save_form="heads"), True, "`save_form='heads'` saves the heads alone and would drop the trained LoRA"),
        (dict(save_form="adapter"), False, "`save_form='adapter'` saves LoRA adapters with the heads, but this run"),
        (dict(save_form="heads"), False, "`save_form='heads'` saves the heads alone, but the backbone is trained too"),
    ],
)
def test_a_save_form_that_cannot_hold_the_training_is_refused_before_the_first_step(tiny_tokenizer, tmp_path, kwargs,
                                                                                   lora, match):  # fmt: skip
    with pytest.raises(ValueError, match=re.escape(match)):
        AdaJudgeRewardTrainer(
            judge_on_backbone(tmp_path / "backbone"),
            make_args(tmp_path / "out", **kwargs),
            train_dataset=synthetic_pairs(4),
            processing_class=tiny_tokenizer,
            peft_config=LoraConfig(r=4) if lora else None,
        )
    assert not (tmp_path / "out").exists()


def test_checkpoints_that_would_not_know_their_backbone_are_refused_before_the_first_step(tiny_tokenizer, tmp_path):
    """A LoRA checkpoint holds adapters + heads and names the backbone: a judge built from a config has none."""
    args = make_args(tmp_path / "out", save_strategy="steps", save_steps=1)
    with pytest.raises(ValueError, match=r"built from a config, so the backbone that the adapter form of its "
                                         r"checkpoints must name is unknown\. Set `model.config.base_model_name_or_path`"):  # fmt: skip
        AdaJudgeRewardTrainer(
            new_judge(tiny_tokenizer), args, train_dataset=synthetic_pairs(4), processing_class=tiny_tokenizer,
            peft_config=LoraConfig(r=4),
        )  # fmt: skip
    # A frozen backbone without a known folder is saved whole: checkpoints stay complete judges.
    trainer = AdaJudgeRewardTrainer(
        new_judge(tiny_tokenizer), make_args(tmp_path / "frozen", save_strategy="steps", save_steps=1,
                                             freeze_backbone=True),
        train_dataset=synthetic_pairs(4), processing_class=tiny_tokenizer,
    )  # fmt: skip
    assert (trainer.checkpoint_form, trainer.judge_save_form) == ("full", "full")


def test_checkpoints_of_a_judge_trained_on_from_a_saved_judge_hold_its_backbone(tiny_tokenizer, tmp_path):
    """Continuing from a full judge (its backbone fine-tuned): heads checkpoints name that folder, not the original
    backbone; from an adapter judge (LoRA merged into the backbone) a frozen backbone is saved in full and new LoRA
    checkpoints are refused, since no folder holds the merged backbone."""
    from conftest import with_random_lora

    judge = judge_on_backbone(tmp_path / "backbone")
    with torch.no_grad():
        for parameter in judge.model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)  # as after full fine-tuning
    full = save_judge(judge, tmp_path / "full", form="full", tokenizer=tiny_tokenizer)
    args = make_args(tmp_path / "out", freeze_backbone=True, save_strategy="steps", save_steps=1, max_steps=1)
    trainer = AdaJudgeRewardTrainer(str(full), args, train_dataset=synthetic_pairs(4))
    trainer.train()
    checkpoint = tmp_path / "out" / "checkpoint-1"
    assert detect_judge_form(checkpoint) == "heads"
    ids, lengths = torch.tensor([[5, 6, 7, 8, 9, 10]]), torch.tensor([2])
    with torch.no_grad():
        expected = trainer.model.eval()(input_ids=ids, prompt_lengths=lengths).logits
        torch.testing.assert_close(load_judge(checkpoint)(input_ids=ids, prompt_lengths=lengths).logits, expected)

    adapter = save_judge(with_random_lora(judge_on_backbone(tmp_path / "backbone")), tmp_path / "adapter",
                         form="adapter", tokenizer=tiny_tokenizer)  # fmt: skip
    frozen = AdaJudgeRewardTrainer(str(adapter), make_args(tmp_path / "o2", freeze_backbone=True,
                                   save_strategy="steps"), train_dataset=synthetic_pairs(4))  # fmt: skip
    assert (frozen.checkpoint_form, frozen.judge_save_form) == ("full", "full")
    with pytest.raises(ValueError, match="merged in, so the adapter form of its checkpoints cannot name a folder"):
        AdaJudgeRewardTrainer(str(adapter), make_args(tmp_path / "o3", save_strategy="steps"),
                              train_dataset=synthetic_pairs(4), peft_config=LoraConfig(r=4))  # fmt: skip


def test_model_given_by_name_is_built_or_loaded(tiny_tokenizer, tmp_path):
    backbone = save_tiny_causal_lm(tmp_path / "backbone")
    args = make_args(tmp_path / "out", model_init_kwargs={"num_refinement_blocks": 1, "head_hidden_size": 8})
    trainer = AdaJudgeRewardTrainer(str(backbone), args, train_dataset=synthetic_pairs(4))
    judge = trainer.model
    assert isinstance(judge, AdaJudgeForRewardModeling) and judge.config.num_refinement_blocks == 1
    assert judge.config.pad_token_id == tiny_tokenizer.pad_token_id and judge.config.response_template is not None
    assert args.model_init_kwargs == {"num_refinement_blocks": 1, "head_hidden_size": 8}  # the caller's args untouched

    saved = save_judge(judge, tmp_path / "judge", form="heads")
    trainer = AdaJudgeRewardTrainer(str(saved), make_args(tmp_path / "out"), train_dataset=synthetic_pairs(4))
    reloaded = load_judge(saved)
    for name, tensor in reloaded.state_dict().items():
        assert torch.equal(trainer.model.state_dict()[name], tensor), name


def test_strength_weights_change_the_loss(tiny_tokenizer, tmp_path):
    losses = []
    for strengths in ([1.0, 9.0], [9.0, 1.0]):
        dataset = synthetic_pairs(2, overall=strengths)
        args = make_args(tmp_path, strength_column="overall", per_device_train_batch_size=2)
        trainer = AdaJudgeRewardTrainer(
            new_judge(tiny_tokenizer), args, train_dataset=dataset, processing_class=tiny_tokenizer
        )
        batch = next(iter(trainer.get_train_dataloader()))
        assert batch["strength"].tolist() == strengths
        losses.append(trainer.compute_loss(trainer.model, dict(batch)).item())
    assert losses[0] != pytest.approx(losses[1])


STRENGTHS = [1.0, 9.0, 4.0, 16.0]  # sqrt: 1, 3, 2, 4; mean 2.5


def test_strength_weights_are_dataset_level_even_at_one_pair_per_device(tiny_tokenizer, tmp_path):
    """Preference-strength weights are normalised over the whole dataset, so they differ between pairs even when a
    micro-batch holds one pair (normalising per micro-batch would make every weight 1)."""
    judge = randomize_head(new_judge(tiny_tokenizer))
    dataset = synthetic_pairs(4, overall=STRENGTHS)
    weighted = AdaJudgeRewardTrainer(
        judge,
        make_args(tmp_path, strength_column="overall", per_device_train_batch_size=1),
        train_dataset=dataset,
        processing_class=tiny_tokenizer,
    )
    unweighted = AdaJudgeRewardTrainer(
        judge,
        make_args(tmp_path, per_device_train_batch_size=1),
        train_dataset=dataset,
        processing_class=tiny_tokenizer,
    )
    assert weighted.strength_scale == pytest.approx(2.5)
    ratios = {}
    for batch in weighted.get_train_dataloader():
        (strength,) = batch["strength"].tolist()
        with torch.no_grad():
            ratios[strength] = (
                weighted.compute_loss(weighted.model, dict(batch)) / unweighted.compute_loss(judge, dict(batch))
            ).item()
    assert ratios == pytest.approx({s: s**0.5 / 2.5 for s in STRENGTHS}, rel=1e-5)
    streamed = IterableDataset.from_generator(lambda: iter(dataset.to_list()))
    trainer = AdaJudgeRewardTrainer(
        judge, make_args(tmp_path, strength_column="overall"), train_dataset=streamed, processing_class=tiny_tokenizer
    )
    assert trainer.strength_scale == pytest.approx(2.5)  # from the first pairs of a stream


def final_head_after_one_step(tokenizer, output_dir, **kwargs) -> tuple[dict, float]:
    judge = randomize_head(new_judge(tokenizer))
    args = make_args(output_dir, strength_column="overall", max_steps=1, optim="sgd", learning_rate=1.0, **kwargs)
    dataset = synthetic_pairs(8, overall=STRENGTHS * 2)
    trainer = AdaJudgeRewardTrainer(judge, args, train_dataset=dataset, processing_class=tokenizer)
    trainer.train()
    return head_state(judge), trainer.state.log_history[0]["loss"]


def test_gradient_accumulation_weights_pairs_like_one_big_batch(tiny_tokenizer, tmp_path):
    big, big_loss = final_head_after_one_step(tiny_tokenizer, tmp_path / "big", per_device_train_batch_size=4)
    accumulated, accumulated_loss = final_head_after_one_step(
        tiny_tokenizer, tmp_path / "accumulated", per_device_train_batch_size=1, gradient_accumulation_steps=4
    )
    assert accumulated_loss == pytest.approx(big_loss, rel=1e-5)
    for name in big:  # plain SGD: equal weights after one step mean equal gradients
        torch.testing.assert_close(accumulated[name], big[name], rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.slow
def test_two_processes_with_one_pair_each_weight_pairs_like_one_process(tmp_path):
    """Under DDP with one pair per rank, strength weights stay dataset-level: two processes follow the loss and
    gradient norms of one process."""
    script = Path(__file__).parent / "scripts" / "train_weighted_distributed.py"
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or shutil.which("accelerate")
    run_script([sys.executable, str(script), "1", "8", "1", str(tmp_path / "one")])
    launch = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"]
    launch += ["--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port())]
    run_script(launch + [str(script), "2", "1", "4", str(tmp_path / "two")])
    one, two = loss_logs(tmp_path / "one"), loss_logs(tmp_path / "two")
    assert [log["step"] for log in two] == [log["step"] for log in one] == [1, 2, 3]
    for one_log, two_log in zip(one, two):
        assert two_log["loss"] == pytest.approx(one_log["loss"], rel=1e-4, abs=1e-6), (one_log, two_log)
        assert two_log["grad_norm"] == pytest.approx(one_log["grad_norm"], rel=1e-3), (one_log, two_log)


def test_bad_input_is_reported(tiny_tokenizer, tmp_path, caplog):
    args = make_args(tmp_path)
    with pytest.raises(ValueError, match="not a preference format"):
        AdaJudgeRewardTrainer(
            new_judge(tiny_tokenizer),
            args,
            train_dataset=Dataset.from_dict({"text": ["a"]}),
            processing_class=tiny_tokenizer,
        )
    no_template = tiny_tokenizer.__class__(
        tokenizer_object=tiny_tokenizer.backend_tokenizer, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    with pytest.raises(ValueError, match="no chat template"):
        AdaJudgeRewardTrainer(
            new_judge(tiny_tokenizer), args, train_dataset=synthetic_pairs(4), processing_class=no_template
        )
    empty = Dataset.from_dict({"prompt": [], "chosen": [], "rejected": []})
    with pytest.raises(ValueError, match=r"The train dataset is empty \(0 rows\)"):
        AdaJudgeRewardTrainer(new_judge(tiny_tokenizer), args, train_dataset=empty, processing_class=tiny_tokenizer)
    with pytest.raises(ValueError, match="Every preference strength is 0"):
        AdaJudgeRewardTrainer(
            new_judge(tiny_tokenizer),
            make_args(tmp_path, strength_column="overall"),
            train_dataset=synthetic_pairs(2, overall=[0.0, 0.0]),
            processing_class=tiny_tokenizer,
        )
    empty_response = {**synthetic_pairs(1)[0], "chosen": [{"role": "assistant", "content": " "}]}
    with_empty = Dataset.from_list(list(synthetic_pairs(4)) + [empty_response])
    with caplog.at_level(logging.WARNING, logger="adajudge_hf.data"):
        trainer = AdaJudgeRewardTrainer(
            new_judge(tiny_tokenizer), args, train_dataset=with_empty, processing_class=tiny_tokenizer
        )
    assert len(trainer.train_dataset) == 4 and "dropped 1 with an empty response" in caplog.text
    with pytest.raises(ValueError, match="processing_class"):
        AdaJudgeRewardTrainer(new_judge(tiny_tokenizer), args, train_dataset=synthetic_pairs(4))
    with pytest.raises(TypeError, match="AdaJudgeRewardConfig"):
        AdaJudgeRewardTrainer(
            new_judge(tiny_tokenizer),
            RewardConfig(str(tmp_path), bf16=False, use_cpu=True, report_to="none"),
            train_dataset=synthetic_pairs(4),
        )


@pytest.mark.parametrize("lengths", ["equal", "unequal"])
def test_packed_layout_gives_the_same_loss_and_gradients(tiny_tokenizer, tmp_path, lengths):
    """One row [prompt; chosen; rejected] per pair gives the loss and gradients of the plain layout, also for
    responses of unequal length cut by `max_length`: a pair's prompt is cut once for both rows, so the plain rows keep
    exactly the prompt the packed row keeps."""
    if lengths == "equal":
        dataset, max_length = synthetic_pairs(8, margin=[0.0, 0.5] * 4), 24  # truncation cuts some prompts
    else:
        dataset, max_length = unequal_pairs(8).add_column("margin", [0.0, 0.5] * 4), 40
    results = []
    for packed in (False, True):
        judge = randomize_head(new_judge(tiny_tokenizer, num_refinement_blocks=2))  # every path carries gradient
        args = make_args(tmp_path / str(packed), packed=packed, max_length=max_length, per_device_train_batch_size=8)
        trainer = AdaJudgeRewardTrainer(judge, args, train_dataset=dataset, processing_class=tiny_tokenizer)
        batch = next(iter(trainer.get_train_dataloader()))
        assert ("segment_ids" in batch) is packed
        if lengths == "unequal" and not packed:
            rows = batch["attention_mask"].sum(-1)
            assert (rows[:8] < max_length).all() and (rows[8:] == max_length).all()  # the chosen rows fit alone
        loss = trainer.compute_loss(trainer.model, dict(batch))
        loss.backward()
        grads = {n: p.grad.clone() for n, p in trainer.model.judge_head.named_parameters()}
        results.append((loss.detach(), grads, int(batch["attention_mask"].sum())))
    (plain_loss, plain_grads, plain_tokens), (packed_loss, packed_grads, packed_tokens) = results
    assert packed_tokens < plain_tokens  # the prompt is encoded once per pair
    torch.testing.assert_close(packed_loss, plain_loss, atol=1e-5, rtol=1e-5)
    for name in plain_grads:
        torch.testing.assert_close(packed_grads[name], plain_grads[name], atol=1e-5, rtol=1e-4, msg=name)


def test_packed_layout_falls_back_where_it_cannot_apply(tiny_tokenizer, tmp_path, caplog):
    judge = new_judge(tiny_tokenizer, refinement_attention="bidirectional")
    with caplog.at_level(logging.WARNING):
        trainer = AdaJudgeRewardTrainer(
            judge, make_args(tmp_path, packed=True), train_dataset=synthetic_pairs(4), processing_class=tiny_tokenizer
        )
    assert "plain layout" in caplog.text
    assert "prompt_lengths" in next(iter(trainer.get_train_dataloader()))
