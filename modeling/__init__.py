"""Hub-portable AdaJudge model definition (imports torch and transformers only).

Installed as `adajudge_hf.modeling`; saved checkpoints carry copies of these two files so that a process without the
package can load them with `trust_remote_code=True`.
"""

from .configuration_adajudge import AdaJudgeConfig
from .modeling_adajudge import AdaJudgeForRewardModeling, AdaJudgePreTrainedModel, AdaJudgeRewardOutput


__all__ = ["AdaJudgeConfig", "AdaJudgeForRewardModeling", "AdaJudgePreTrainedModel", "AdaJudgeRewardOutput"]
