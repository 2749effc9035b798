"""adajudge_hf: AdaJudge reward models for the Hugging Face stack.

Importing the package registers `AdaJudgeConfig` with `AutoConfig` and `AdaJudgeForRewardModeling` with `AutoModel`
and `AutoModelForSequenceClassification`, so saved judges load without `trust_remote_code`.
"""

from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

from .modeling import AdaJudgeConfig, AdaJudgeForRewardModeling, AdaJudgePreTrainedModel, AdaJudgeRewardOutput


__version__ = "0.1.0"

AutoConfig.register(AdaJudgeConfig.model_type, AdaJudgeConfig, exist_ok=True)
AutoModel.register(AdaJudgeConfig, AdaJudgeForRewardModeling, exist_ok=True)
AutoModelForSequenceClassification.register(AdaJudgeConfig, AdaJudgeForRewardModeling, exist_ok=True)
# Saving copies the self-contained `modeling/` files next to the weights (see `config.auto_map`).
AdaJudgeConfig.register_for_auto_class("AutoConfig")
AdaJudgeForRewardModeling.register_for_auto_class("AutoModel")

__all__ = ["AdaJudgeConfig", "AdaJudgeForRewardModeling", "AdaJudgePreTrainedModel", "AdaJudgeRewardOutput"]
