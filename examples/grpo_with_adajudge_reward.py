"""GRPO (or RLOO) with an AdaJudge judge as the reward model (TRL's `reward_funcs=judge`).

TRL renders each prompt + completion through the judge's chat template and calls the judge with `input_ids` and
`attention_mask` only. The judge finds the response itself from `config.response_template` (the assistant-turn
header, derived from the chat template when the judge is built with `from_backbone`), so it scores exactly what it
scores with explicit response masks.

    python examples/grpo_with_adajudge_reward.py                          # tiny random policy and judge, offline
    python examples/grpo_with_adajudge_reward.py --policy Qwen/Qwen3-0.6B --judge org/adajudge-qwen3-8b
    python examples/grpo_with_adajudge_reward.py --trainer rloo          # RLOOTrainer, same reward path
    python examples/grpo_with_adajudge_reward.py --reward packed         # AdaJudgeReward: each prompt's G completions
                                                                          # scored as one packed row, same rewards
    python examples/grpo_with_adajudge_reward.py --reward http://127.0.0.1:5000   # a running `adajudge serve`
                                          # (retried with backoff; ADAJUDGE_API_KEY for a server with --api-key)

Plain-text (non-conversational) prompts have no assistant header: the judge then scores the whole text as response
(with a warning). Use conversational prompts with a judge trained on chat data.
"""

import argparse
import tempfile
from pathlib import Path

from datasets import Dataset
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

import adajudge_hf  # noqa: F401  (registers the AdaJudge Auto classes)
from adajudge_hf import AdaJudgeForRewardModeling
from adajudge_hf.serve import AdaJudgeReward
from adajudge_hf.testing import save_tiny_causal_lm


PROMPTS = [
    "What is the capital of France?",
    "How do I bake bread?",
    "Write a polite refusal.",
    "What is 2+2?",
]


TRAINERS = {"grpo": (GRPOConfig, GRPOTrainer), "rloo": (RLOOConfig, RLOOTrainer)}


def main(argv: list[str] | None = None) -> GRPOTrainer | RLOOTrainer:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--policy", help="policy model id or folder (default: a tiny random causal LM)")
    parser.add_argument("--judge", help="AdaJudge checkpoint id or folder (default: a tiny judge)")
    parser.add_argument("--output-dir", default=None)
    parser.add_argument("--max-steps", type=int, default=2)
    parser.add_argument("--trainer", choices=TRAINERS, default="grpo")
    parser.add_argument(
        "--reward",
        default="model",
        help="'model': the judge itself as reward_funcs (TRL pads every row); 'packed': AdaJudgeReward(judge); "
        "or the URL(s) of `adajudge serve` servers (comma-separated), scored remotely and asynchronously",
    )
    args = parser.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="adajudge-grpo-"))
    policy = args.policy or str(save_tiny_causal_lm(workdir / "policy", seed=1))
    if args.judge:
        judge = AutoModelForSequenceClassification.from_pretrained(args.judge)
        judge_tokenizer = AutoTokenizer.from_pretrained(args.judge)
    else:
        backbone = save_tiny_causal_lm(workdir / "judge-backbone", seed=2)
        judge = AdaJudgeForRewardModeling.from_backbone(backbone, num_refinement_blocks=1)
        judge_tokenizer = AutoTokenizer.from_pretrained(backbone)

    dataset = Dataset.from_dict({"prompt": [[{"role": "user", "content": p}] for p in PROMPTS]})
    config_class, trainer_class = TRAINERS[args.trainer]
    config = config_class(
        output_dir=args.output_dir or str(workdir / "grpo"),
        max_steps=args.max_steps,
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=8,
        learning_rate=1e-4,
        logging_steps=1,
        use_cpu=True,
        bf16=False,
        report_to="none",
        save_strategy="no",
    )
    if args.reward == "model":
        reward_funcs = judge
    elif args.reward == "packed":
        reward_funcs = AdaJudgeReward(judge, judge_tokenizer)
    else:
        reward_funcs = AdaJudgeReward(args.reward)
    trainer = trainer_class(
        model=policy,
        reward_funcs=reward_funcs,
        reward_processing_classes=judge_tokenizer if args.reward == "model" else None,
        args=config,
        train_dataset=dataset,
    )
    trainer.train()
    return trainer


if __name__ == "__main__":
    main()
