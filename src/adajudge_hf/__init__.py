"""adajudge_hf: AdaJudge reward models for the Hugging Face stack.

Importing the package registers `AdaJudgeConfig` with `AutoConfig` and `AdaJudgeForRewardModeling` with `AutoModel`
and `AutoModelForSequenceClassification`, so saved judges load without `trust_remote_code`. The training, checkpoint
and packing helpers are imported on first use, so `import adajudge_hf` stays as light as importing transformers.
"""

import importlib

from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

from .modeling import AdaJudgeConfig, AdaJudgeForRewardModeling, AdaJudgePreTrainedModel, AdaJudgeRewardOutput


__version__ = "0.1.0"

AutoConfig.register(AdaJudgeConfig.model_type, AdaJudgeConfig, exist_ok=True)
AutoModel.register(AdaJudgeConfig, AdaJudgeForRewardModeling, exist_ok=True)
AutoModelForSequenceClassification.register(AdaJudgeConfig, AdaJudgeForRewardModeling, exist_ok=True)
# Saving copies the self-contained `modeling/` files next to the weights (see `config.auto_map`).
AdaJudgeConfig.register_for_auto_class("AutoConfig")
AdaJudgeForRewardModeling.register_for_auto_class("AutoModel")

_LAZY = {
    "AdaJudgeRewardConfig": "trainer",
    "AdaJudgeRewardTrainer": "trainer",
    "adajudge_lora_config": "lora",
    "save_judge": "checkpoint",
    "load_judge": "checkpoint",
    "score_best_of_n": "packing",
    "push_judge": "hub",
    "evaluate_model": "evaluation",
    "evaluate_length_baseline": "evaluation",
    "score_responses": "evaluation",
    "load_benchmark": "evaluation",
    "rm_bench_scores": "evaluation",
    "judgebench_scores": "evaluation",
    "pairwise_accuracy": "evaluation",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AdaJudgeConfig",
    "AdaJudgeForRewardModeling",
    "AdaJudgePreTrainedModel",
    "AdaJudgeRewardOutput",
    *_LAZY,
]
