"""AdaJudge configuration.

AdaJudge (https://huggingface.co/papers/2601.08097) wraps a decoder-only backbone with K depth-routed refinement
blocks and a prompt-conditioned mixture of pooling experts. This file imports only the standard library and
transformers so that it can travel with a checkpoint as remote code.
"""

import math

from transformers import AutoConfig, PreTrainedConfig


try:  # transformers >= 5.20 builds sub-configs from `sub_configs_defaults`
    from transformers.configuration_utils import SubConfigSpec
except ImportError:  # older releases (e.g. the range vLLM 0.32 accepts): `__post_init__` builds `text_config` itself
    SubConfigSpec = None


POOLING_EXPERTS = ("last", "mean", "attention")
"""The pooling experts of Stage II, in the order of `routing_weights` and `expert_scores`."""

POOLING_CHOICES = ("adaptive",) + POOLING_EXPERTS
REFINEMENT_ATTENTION_CHOICES = ("causal", "bidirectional")
ATTENTION_POOLING_SCOPES = ("all", "response")
SCORE_HEAD_CHOICES = ("mlp", "linear")
AUTO_MAP = {
    "AutoConfig": "configuration_adajudge.AdaJudgeConfig",
    "AutoModel": "modeling_adajudge.AdaJudgeForRewardModeling",
    "AutoModelForSequenceClassification": "modeling_adajudge.AdaJudgeForRewardModeling",
}
"""The remote code a saved config names: a process without `adajudge_hf` loads the judge with
`trust_remote_code=True`; with the package installed the locally registered classes win and no remote code runs."""


def validate_loss_hyperparameters(
    bt_temperature: float, focal_gamma: float, entropy_floor: float, entropy_floor_coef: float
) -> None:
    """Raise a `ValueError` for loss hyper-parameters outside their domain (shared by the model and trainer configs)."""
    if not bt_temperature > 0:
        raise ValueError(f"`bt_temperature` must be > 0, got {bt_temperature}.")
    if not focal_gamma >= 0:
        raise ValueError(f"`focal_gamma` must be >= 0 (0 gives the plain Bradley-Terry loss), got {focal_gamma}.")
    if not 0 <= entropy_floor < math.log(len(POOLING_EXPERTS)):
        raise ValueError(
            f"`entropy_floor` must be in [0, ln {len(POOLING_EXPERTS)} = {math.log(len(POOLING_EXPERTS)):.4f}) nats "
            f"(the entropy of a uniform routing over the experts is the maximum), got {entropy_floor}."
        )
    if not entropy_floor_coef >= 0:
        raise ValueError(f"`entropy_floor_coef` must be >= 0 (0 disables the floor), got {entropy_floor_coef}.")


class AdaJudgeConfig(PreTrainedConfig):
    r"""
    Configuration of an [`AdaJudgeForRewardModeling`] reward model.

    Args:
        text_config (`dict` or `PreTrainedConfig`, *optional*):
            Configuration of the decoder-only backbone (any `AutoModel`). Defaults to a Qwen3 configuration.
        num_refinement_blocks (`int`, *optional*, defaults to 3):
            K, the number of Stage I refinement blocks. 0 disables Stage I (the paper's "w/o refinement" ablation).
        refinement_num_heads (`int`, *optional*):
            Attention heads of each refinement block. Defaults to the backbone's `num_attention_heads`.
        refinement_intermediate_size (`int`, *optional*):
            Width of the SwiGLU feed-forward of each refinement block. Defaults to `2 * hidden_size`.
        refinement_attention (`str`, *optional*, defaults to `"causal"`):
            `"causal"` (consistent with the backbone; lets a shared prompt be computed once) or `"bidirectional"`.
        depth_router_include_input (`bool`, *optional*, defaults to `False`):
            Whether the backbone output H0 is a candidate of the depth router next to H(1)..H(K).
        pooling (`str`, *optional*, defaults to `"adaptive"`):
            `"adaptive"` routes over the three pooling experts; `"last"`, `"mean"` or `"attention"` is a static
            baseline that uses that expert alone.
        attention_pooling_scope (`str`, *optional*, defaults to `"all"`):
            Tokens the attention expert may attend to: `"all"` valid tokens (prompt included) or `"response"` only.
        head_hidden_size (`int`, *optional*, defaults to 256):
            Hidden width h of each expert's MLP score head and of the pooling router.
        score_head (`str`, *optional*, defaults to `"mlp"`):
            `"mlp"` (Linear-GELU-Linear, the paper) or `"linear"` (the stock reward-model readout, for baselines).
        router_temperature (`float`, *optional*, defaults to 1.0):
            Softmax temperature of the pooling router.
        response_template (`list[int]`, *optional*):
            Token ids that open the response (for chat models, the assistant-turn header). Used to find the response
            when `forward` receives neither `response_mask` nor `prompt_lengths`.
        rms_norm_eps (`float`, *optional*, defaults to 1e-6):
            Epsilon of the refinement blocks' RMSNorms.
        initializer_range (`float`, *optional*, defaults to 0.02):
            Standard deviation of the normal initialisation of the heads' linear layers.
        pad_token_id (`int`, *optional*):
            Padding token id, mirrored from the tokenizer for tools that read `config.pad_token_id`. The model never
            uses it to find tokens: positions come from `attention_mask`.
        bt_temperature (`float`, *optional*, defaults to 1.0):
            Temperature of the Bradley-Terry probability p = sigmoid((r+ - r- - margin) / bt_temperature).
        focal_gamma (`float`, *optional*, defaults to 2.0):
            Focal exponent of the loss; 0 gives the plain Bradley-Terry loss.
        entropy_floor (`float`, *optional*, defaults to 0.5):
            Entropy floor eta (nats) on the routing weights; must be below ln 3.
        entropy_floor_coef (`float`, *optional*, defaults to 0.1):
            Weight lambda of the squared hinge max(0, eta - H(pi))^2; 0 disables it.

    The loss fields record the objective the judge is trained with; `AdaJudgeRewardConfig` can override them.

    Example:

    ```python
    >>> from transformers import Qwen3Config
    >>> from adajudge_hf import AdaJudgeConfig
    >>> config = AdaJudgeConfig(text_config=Qwen3Config(hidden_size=64, num_hidden_layers=2), num_refinement_blocks=2)
    >>> config.pooling
    'adaptive'
    ```
    """

    model_type = "adajudge"
    if SubConfigSpec is not None:
        sub_configs_defaults = {"text_config": SubConfigSpec(config_class=AutoConfig, model_type="qwen3")}
    else:
        sub_configs = {"text_config": AutoConfig}

    text_config: dict | PreTrainedConfig | None = None
    num_refinement_blocks: int = 3
    refinement_num_heads: int | None = None
    refinement_intermediate_size: int | None = None
    refinement_attention: str = "causal"
    depth_router_include_input: bool = False
    pooling: str = "adaptive"
    attention_pooling_scope: str = "all"
    head_hidden_size: int = 256
    score_head: str = "mlp"
    router_temperature: float = 1.0
    response_template: list[int] | None = None
    rms_norm_eps: float = 1e-6
    initializer_range: float = 0.02
    pad_token_id: int | None = None
    bt_temperature: float = 1.0
    focal_gamma: float = 2.0
    entropy_floor: float = 0.5
    entropy_floor_coef: float = 0.1

    def __post_init__(self, **kwargs):
        # A reward model emits one scalar; TRL refuses anything else.
        if self.id2label is None and "num_labels" not in kwargs:
            kwargs["num_labels"] = 1
        if SubConfigSpec is None and not isinstance(self.text_config, PreTrainedConfig):
            text_config = dict(self.text_config or {})
            self.text_config = AutoConfig.for_model(text_config.pop("model_type", "qwen3"), **text_config)
        super().__post_init__(**kwargs)
        # `auto_map` is not a declared field; entries a saved config already has are kept.
        self.auto_map = {**AUTO_MAP, **(getattr(self, "auto_map", None) or {})}
        if self.refinement_num_heads is None:
            self.refinement_num_heads = self.text_config.num_attention_heads
        if self.refinement_intermediate_size is None:
            self.refinement_intermediate_size = 2 * self.text_config.hidden_size
        if self.response_template is not None:
            self.response_template = [int(token_id) for token_id in self.response_template]
        self._validate()

    def _validate(self) -> None:
        if not isinstance(self.num_refinement_blocks, int) or self.num_refinement_blocks < 0:
            raise ValueError(
                f"`num_refinement_blocks` must be an integer >= 0 (0 disables Stage I), got {self.num_refinement_blocks}."
            )
        if self.pooling not in POOLING_CHOICES:
            raise ValueError(f"`pooling` must be one of {POOLING_CHOICES}, got {self.pooling!r}.")
        if self.refinement_attention not in REFINEMENT_ATTENTION_CHOICES:
            raise ValueError(
                f"`refinement_attention` must be one of {REFINEMENT_ATTENTION_CHOICES}, got {self.refinement_attention!r}."
            )
        if self.attention_pooling_scope not in ATTENTION_POOLING_SCOPES:
            raise ValueError(
                f"`attention_pooling_scope` must be one of {ATTENTION_POOLING_SCOPES}, "
                f"got {self.attention_pooling_scope!r}."
            )
        if self.score_head not in SCORE_HEAD_CHOICES:
            raise ValueError(f"`score_head` must be one of {SCORE_HEAD_CHOICES}, got {self.score_head!r}.")
        if self.refinement_num_heads < 1 or self.hidden_size % self.refinement_num_heads != 0:
            raise ValueError(
                f"`refinement_num_heads` must divide the backbone hidden size {self.hidden_size}, "
                f"got {self.refinement_num_heads}."
            )
        for name in ("refinement_intermediate_size", "head_hidden_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be >= 1, got {getattr(self, name)}.")
        if not self.router_temperature > 0:
            raise ValueError(f"`router_temperature` must be > 0, got {self.router_temperature}.")
        if self.response_template is not None and len(self.response_template) == 0:
            raise ValueError("`response_template` must hold at least one token id, or be None.")
        validate_loss_hyperparameters(
            self.bt_temperature, self.focal_gamma, self.entropy_floor, self.entropy_floor_coef
        )

    @property
    def hidden_size(self) -> int:
        return self.text_config.hidden_size

    @property
    def experts(self) -> tuple[str, ...]:
        """Pooling experts this configuration instantiates, in output order."""
        return POOLING_EXPERTS if self.pooling == "adaptive" else (self.pooling,)


__all__ = ["AdaJudgeConfig"]
