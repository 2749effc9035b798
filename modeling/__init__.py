"""Hub-portable AdaJudge model definition (imports torch and transformers only).

Installed as `adajudge_hf.modeling`; full checkpoints carry copies of the `REMOTE_CODE_FILES` (`save_pretrained`
copies the model's file and its relative imports) so that a process without the package can load them with
`trust_remote_code=True`.
"""

from .configuration_adajudge import AdaJudgeConfig
from .modeling_adajudge import AdaJudgeForRewardModeling, AdaJudgePreTrainedModel, AdaJudgeRewardOutput
from .tokenization_adajudge import find_response_template


REMOTE_CODE_FILES = (
    "configuration_adajudge.py",
    "loading_adajudge.py",
    "modeling_adajudge.py",
    "tokenization_adajudge.py",
)
"""The files of this folder a full checkpoint carries as remote code."""

__all__ = [
    "REMOTE_CODE_FILES",
    "AdaJudgeConfig",
    "AdaJudgeForRewardModeling",
    "AdaJudgePreTrainedModel",
    "AdaJudgeRewardOutput",
    "find_response_template",
]
