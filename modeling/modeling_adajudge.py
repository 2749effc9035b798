"""AdaJudge reward model: backbone -> K depth-routed refinement blocks -> routed mixture of pooling experts.

Paper: https://huggingface.co/papers/2601.08097. Method with every open choice resolved: `shared/spec/METHOD.md`.
This file imports only torch and transformers (plus its siblings) so it can travel as remote code; loading
(file checks, the save forms, `from_backbone`) lives in `loading_adajudge.py` beside it.

Shapes: B batch, L sequence length, D backbone hidden size, E pooling experts, K refinement blocks.
"""

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, PreTrainedModel, PreTrainedTokenizerBase
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.utils import ModelOutput, logging

from .configuration_adajudge import AdaJudgeConfig
from .loading_adajudge import keys_to_ignore_on_load, load_from_backbone, load_pretrained

# Not used here: transformers < 5.10 copies only the modeling file's own relative imports when it loads remote code
# from a local folder, so the sibling that loading_adajudge.py imports is named here as well.
from .tokenization_adajudge import find_response_template  # noqa: F401


logger = logging.get_logger(__name__)


class AdaJudgeZeroInitLinear(nn.Linear):
    """A linear layer initialised to zero: residual branches start as the identity, routers start uniform."""


class AdaJudgeRMSNorm(nn.RMSNorm):
    """RMSNorm computed in fp32 and returned in the input's dtype (as transformers' Llama does): squares of fp16
    states overflow past ~256, and the result must match the dtype of the linear that reads it."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        normed = F.rms_norm(hidden_states.float(), self.normalized_shape, self.weight.float(), self.eps)
        return normed.to(hidden_states.dtype)


class AdaJudgeRefinementBlock(GradientCheckpointingLayer):
    """Pre-RMSNorm transformer block at the backbone width (Stage I).

    No positional encoding: the backbone states already carry position. The output projections start at zero, so the
    block is the identity until it learns otherwise.
    """

    def __init__(self, config: AdaJudgeConfig):
        super().__init__()
        hidden_size = config.hidden_size
        self.num_heads = config.refinement_num_heads
        self.is_causal = config.refinement_attention == "causal"
        self.attn_norm = AdaJudgeRMSNorm(hidden_size, eps=config.rms_norm_eps)
        self.attn_qkv = nn.Linear(hidden_size, 3 * hidden_size, bias=False)
        self.attn_out = AdaJudgeZeroInitLinear(hidden_size, hidden_size, bias=False)
        self.ffn_norm = AdaJudgeRMSNorm(hidden_size, eps=config.rms_norm_eps)
        self.ffn_in = nn.Linear(hidden_size, 2 * config.refinement_intermediate_size, bias=False)  # SwiGLU gate + up
        self.ffn_out = AdaJudgeZeroInitLinear(config.refinement_intermediate_size, hidden_size, bias=False)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """`attention_mask` is a (B, 1, L, L) boolean "may attend" mask, or None when no row is padded."""
        batch_size, seq_len, hidden_size = hidden_states.shape
        q, k, v = self.attn_qkv(self.attn_norm(hidden_states)).split(hidden_size, dim=-1)  # 3 x (B, L, D)
        q, k, v = (
            t.view(batch_size, seq_len, self.num_heads, -1).transpose(1, 2) for t in (q, k, v)
        )  # (B, nh, L, hd)
        if attention_mask is None:
            attended = F.scaled_dot_product_attention(q, k, v, is_causal=self.is_causal)
        else:
            attended = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask)  # (B, nh, L, hd)
        attended = attended.transpose(1, 2).reshape(batch_size, seq_len, hidden_size)  # (B, L, D)
        hidden_states = hidden_states + self.attn_out(attended)
        gate, up = self.ffn_in(self.ffn_norm(hidden_states)).chunk(2, dim=-1)  # 2 x (B, L, I)
        return hidden_states + self.ffn_out(F.silu(gate) * up)


def mean_weights(masks: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(..., L) masks -> per-token weights 1/count (zeros for an empty mask), in `dtype`.

    Dividing before summing keeps every partial sum within the range of the states: fp16 sums of 4,096 tokens
    around 20 would overflow (the matmul accumulates in fp32 but rounds its result to fp16).
    """
    weights = masks.float()
    return (weights / weights.sum(-1, keepdim=True).clamp_min(1.0)).to(dtype)


def masked_mean(hidden_states: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Mean of (B, L, D) states over each of N (B, N, L) masks -> (B, N, D); zeros for an empty mask."""
    return torch.einsum("bnl,bld->bnd", mean_weights(masks, hidden_states.dtype), hidden_states)


def check_shape(name: str, tensor: torch.Tensor, expected: tuple[int, ...], meaning: str) -> None:
    """Raise a ValueError naming `name`, the expected and the actual shape, instead of a broadcasting error later."""
    if tuple(tensor.shape) != tuple(expected):
        raise ValueError(
            f"`{name}` has shape {tuple(tensor.shape)}, expected {tuple(expected)} ({meaning}). Build it from the same "
            "padded batch as `input_ids` and `attention_mask`."
        )


def attention_allowed(valid_mask: torch.Tensor, causal: bool, segment_ids: torch.Tensor | None = None) -> torch.Tensor:
    """(B, 1, L, L) boolean "query may attend to key" mask.

    Keys must be valid and, when `causal`, not in the future. With `segment_ids` (0 = shared prompt, s >= 1 = response
    s), a response token sees the prompt and its own response only. Every query sees itself, so a padded query never
    has an empty softmax.
    """
    seq_len = valid_mask.shape[1]
    eye = torch.eye(seq_len, dtype=torch.bool, device=valid_mask.device)
    allowed = valid_mask[:, None, None, :]  # (B, 1, 1, L) keys
    if causal:
        allowed = allowed & torch.ones_like(eye).tril()  # keys at or before the query
    if segment_ids is not None:
        query, key = segment_ids[:, None, :, None], segment_ids[:, None, None, :]  # (B, 1, L, 1), (B, 1, 1, L)
        allowed = allowed & ((key == 0) | (key == query))
    return allowed | eye  # (B, 1, L, L)


@dataclass
class AdaJudgeRewardOutput(ModelOutput):
    r"""
    Output of [`AdaJudgeForRewardModeling`].

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*):
            Mean squared error against `labels`, when labels are given (regression, as for `num_labels=1` classifiers).
        logits (`torch.FloatTensor` of shape `(batch_size, 1)`):
            The reward r = sum_v pi_v s_v, in float32.
        expert_scores (`torch.FloatTensor` of shape `(batch_size, num_experts)`):
            Score s_v of each pooling expert, in the order of `config.experts`.
        routing_weights (`torch.FloatTensor` of shape `(batch_size, num_experts)`):
            Pooling-router weights pi (all ones for a static pooling).
        depth_weights (`torch.FloatTensor` of shape `(batch_size, num_depth_candidates)`, *optional*):
            Depth-router weights alpha over H(1)..H(K) (H0 first when `depth_router_include_input`); None when K = 0.
        hidden_states (`tuple(torch.FloatTensor)`, *optional*):
            Backbone hidden states, when `output_hidden_states=True`.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    expert_scores: torch.FloatTensor | None = None
    routing_weights: torch.FloatTensor | None = None
    depth_weights: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class AdaJudgeLayout:
    """Where the prompt and each response of a batch lie: what the heads read besides the backbone states.

    Plain rows hold one response each (N = 1); packed rows [prompt; r1; ...; rN] share their prompt. Built by
    `from_inputs` from the boundary inputs of `forward`, so every caller (the transformers model,
    `score_hidden_states`, the vLLM model) locates responses the same way.
    """

    prompt_mask: torch.Tensor
    """(B, L) prompt tokens."""
    response_masks: torch.Tensor
    """(B, N, L) tokens of each response."""
    context_masks: torch.Tensor
    """(B, N, L) tokens each response is read with: the prompt and itself."""
    block_mask: torch.Tensor | None
    """(B, 1, L, L) "may attend" mask of the refinement blocks; None for unpadded plain rows (causal fast path)."""
    position_ids: torch.Tensor
    """(B, L) positions counted from each row's first valid token (restarting after the prompt for each response)."""

    @classmethod
    def from_inputs(
        cls,
        config: AdaJudgeConfig,
        valid_mask: torch.Tensor,
        input_ids: torch.Tensor | None = None,
        response_mask: torch.Tensor | None = None,
        prompt_lengths: torch.Tensor | None = None,
        segment_ids: torch.Tensor | None = None,
    ) -> "AdaJudgeLayout":
        """The layout of plain rows (response from `response_mask`, `prompt_lengths` or `config.response_template`
        found in `input_ids`, in that order) or of packed rows (`segment_ids`). `valid_mask` (B, L) marks real tokens."""
        if segment_ids is not None:
            check_shape("segment_ids", segment_ids, valid_mask.shape, "one segment id per token, like `input_ids`")
            return _packed_layout(config, segment_ids, valid_mask)
        response = _locate_response(config, input_ids, valid_mask, response_mask, prompt_lengths)  # (B, L)
        causal = config.refinement_attention == "causal"
        return cls(
            prompt_mask=valid_mask & ~response,
            response_masks=response[:, None],  # (B, 1, L)
            context_masks=valid_mask[:, None],
            block_mask=None if bool(valid_mask.all()) else attention_allowed(valid_mask, causal),
            # Count positions from the first valid token, so left padding changes nothing.
            position_ids=(valid_mask.long().cumsum(-1) - 1).clamp_min(0),
        )


def valid_token_mask(reference: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """(B, L) boolean mask of real tokens of a (B, L, ...) `reference`; rows with none are an error."""
    if attention_mask is None:
        return torch.ones(reference.shape[:2], dtype=torch.bool, device=reference.device)
    valid_mask = attention_mask.bool()
    padding_rows = (~valid_mask.any(-1)).nonzero().flatten().tolist()
    if padding_rows:
        raise ValueError(f"Row(s) {padding_rows} of `attention_mask` are all padding: there is nothing to score.")
    return valid_mask


def supports_packed_inputs(config: AdaJudgeConfig) -> bool:
    """Whether `segment_ids` (shared-prompt packing) applies: causal refinement and a backbone that takes 4-D masks."""
    attention = config.text_config._attn_implementation
    return config.refinement_attention == "causal" and attention in ("eager", "sdpa")


def _locate_response(
    config: AdaJudgeConfig,
    input_ids: torch.Tensor | None,
    valid_mask: torch.Tensor,
    response_mask: torch.Tensor | None,
    prompt_lengths: torch.Tensor | None,
) -> torch.Tensor:
    """(B, L) boolean mask of response tokens, by the precedence of `AdaJudgeLayout.from_inputs`."""
    if response_mask is not None:
        check_shape("response_mask", response_mask, valid_mask.shape, "one 0/1 flag per token, like `input_ids`")
        response = response_mask.bool() & valid_mask
    elif prompt_lengths is not None:
        prompt_lengths = torch.as_tensor(prompt_lengths, device=valid_mask.device)
        check_shape("prompt_lengths", prompt_lengths, valid_mask.shape[:1], "one prompt length per row")
        valid_counts = valid_mask.sum(-1)  # (B,)
        negative = (prompt_lengths < 0).nonzero().flatten().tolist()
        if negative:
            raise ValueError(
                f"`prompt_lengths` must be >= 0, got {prompt_lengths[negative].tolist()} in row(s) {negative}: a "
                "prompt length is the number of prompt tokens among the row's valid tokens."
            )
        too_long = (prompt_lengths >= valid_counts).nonzero().flatten().tolist()
        if too_long:
            raise ValueError(
                f"`prompt_lengths` {prompt_lengths[too_long].tolist()} in row(s) {too_long} leave no response: "
                f"those rows have only {valid_counts[too_long].tolist()} valid token(s). A prompt length counts the "
                "prompt tokens among the tokens `attention_mask` keeps; check that truncation kept the response."
            )
        valid_index = valid_mask.long().cumsum(-1)  # (B, L): 1-based index among valid tokens
        response = valid_mask & (valid_index > prompt_lengths[:, None])
    elif config.response_template is not None and input_ids is not None:
        response = _response_after_template(config.response_template, input_ids, valid_mask)
    else:
        logger.warning_once(
            "AdaJudge got no `response_mask`, `prompt_lengths` or `config.response_template`: every token is "
            "treated as response and the prompt context z_P is zero. Pass the boundary for prompt-aware routing."
        )
        response = valid_mask
    empty = (~response.any(-1)).nonzero().flatten().tolist()
    if empty:
        raise ValueError(
            f"Row(s) {empty} have an empty response: no valid token is marked as response. Every example needs a "
            "non-empty response; check the data and that truncation kept the end of the response."
        )
    return response


def _response_after_template(
    response_template: list[int], input_ids: torch.Tensor, valid_mask: torch.Tensor
) -> torch.Tensor:
    """Response = the valid tokens after the last occurrence of `response_template` in each row."""
    template = torch.tensor(response_template, device=input_ids.device)
    width, seq_len = template.numel(), input_ids.shape[1]
    if seq_len < width:
        found = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        starts = torch.zeros_like(found, dtype=torch.long)
    else:
        windows = input_ids.unfold(1, width, 1)  # (B, L - w + 1, w)
        hits = (windows == template).all(-1) & valid_mask.unfold(1, width, 1).all(-1)  # (B, L - w + 1)
        found = hits.any(-1)
        starts = hits.shape[1] - 1 - hits.int().flip(-1).argmax(-1)  # (B,) last hit
    positions = torch.arange(seq_len, device=input_ids.device)
    response = valid_mask & (positions[None] >= (starts + width)[:, None])
    if not bool(found.all()):
        logger.warning_once(
            f"`config.response_template` {response_template} was not found in "
            f"{int((~found).sum())} row(s): those rows are scored as all-response with no prompt context. "
            "Render prompts with the same chat template as the judge, or pass `response_mask`."
        )
        response = torch.where(found[:, None], response, valid_mask)
    return response


def _packed_layout(config: AdaJudgeConfig, segment_ids: torch.Tensor, valid_mask: torch.Tensor) -> AdaJudgeLayout:
    """The layout of packed rows: segment 0 the shared prompt, segments 1..N the responses."""
    if not supports_packed_inputs(config):
        raise ValueError(
            "Packed inputs (`segment_ids`) need causal refinement blocks and an eager or SDPA backbone, got "
            f"refinement_attention={config.refinement_attention!r} and attention implementation "
            f"{config.text_config._attn_implementation!r}. Score these rows unpacked instead."
        )
    segment_ids = segment_ids.masked_fill(~valid_mask, -1)
    num_responses = int(segment_ids.max())
    segments = torch.arange(1, num_responses + 1, device=segment_ids.device)
    response_masks = segment_ids[:, None, :] == segments[None, :, None]  # (B, N, L)
    missing = (~response_masks.any(-1)).nonzero().tolist()
    if num_responses < 1 or missing:
        raise ValueError(
            f"Every packed row needs responses 1..{num_responses} in `segment_ids`; (row, response) pairs "
            f"{[(row, response + 1) for row, response in missing]} are empty."
        )
    prompt_mask = segment_ids == 0  # (B, L)
    # Positions: the prompt counts from 0, each response continues from the end of the prompt.
    one_hot = F.one_hot(segment_ids.clamp_min(0), num_responses + 1) * valid_mask[..., None]  # (B, L, N + 1)
    own_count = one_hot.cumsum(1).gather(-1, segment_ids.clamp_min(0)[..., None]).squeeze(-1)  # (B, L)
    prompt_length = one_hot[..., 0].sum(-1, keepdim=True)  # (B, 1)
    return AdaJudgeLayout(
        prompt_mask=prompt_mask,
        response_masks=response_masks,
        context_masks=response_masks | prompt_mask[:, None],  # (B, N, L)
        block_mask=attention_allowed(valid_mask, causal=True, segment_ids=segment_ids),
        position_ids=(own_count - 1 + (segment_ids > 0) * prompt_length).clamp_min(0),
    )


class AdaJudgeHead(nn.Module):
    """Everything that is not the backbone, in one module so PEFT can train and save it as a unit.

    Stage I: refinement blocks mixed by a depth router. Stage II: pooling experts with their own score heads, mixed
    by a router that reads the pooled views and the prompt context z_P.
    """

    def __init__(self, config: AdaJudgeConfig):
        super().__init__()
        hidden_size, head_hidden = config.hidden_size, config.head_hidden_size
        self.experts = config.experts
        self.depth_router_include_input = config.depth_router_include_input
        self.attention_pooling_scope = config.attention_pooling_scope
        self.router_temperature = config.router_temperature

        self.refinement_blocks = nn.ModuleList(
            [AdaJudgeRefinementBlock(config) for _ in range(config.num_refinement_blocks)]
        )
        num_depth_candidates = config.num_refinement_blocks + int(config.depth_router_include_input)
        self.depth_router = (
            AdaJudgeZeroInitLinear(hidden_size, num_depth_candidates) if config.num_refinement_blocks else None
        )
        self.attention_pool = nn.Linear(hidden_size, 1) if "attention" in self.experts else None

        def score_head() -> nn.Module:
            if config.score_head == "linear":
                return nn.Linear(hidden_size, 1)
            return nn.Sequential(nn.Linear(hidden_size, head_hidden), nn.GELU(), nn.Linear(head_hidden, 1))

        self.expert_heads = nn.ModuleDict({name: score_head() for name in self.experts})
        if len(self.experts) > 1:
            self.pooling_router = nn.Sequential(
                nn.Linear(4 * hidden_size, head_hidden),
                nn.GELU(),
                AdaJudgeZeroInitLinear(head_hidden, len(self.experts)),
            )
        else:
            self.pooling_router = None

    def forward(
        self,
        hidden_states: torch.Tensor,
        prompt_mask: torch.Tensor,
        response_masks: torch.Tensor,
        context_masks: torch.Tensor,
        attention_mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Score N responses per row from the backbone states H0 (B, L, D).

        `prompt_mask` (B, L) marks the prompt; `response_masks` (B, N, L) the tokens of each response and
        `context_masks` (B, N, L) the tokens each response is read with (prompt + itself). A plain row has N = 1; a
        packed row [prompt; r1; ...; rN] shares its prompt. `attention_mask` is the refinement blocks' (B, 1, L, L)
        mask, or None for unpadded plain rows. Returns reward (B, N), expert scores (B, N, E), pi (B, N, E) and alpha
        (B, N, C) or None.

        H~ = sum_c alpha_c H(c) is never materialised: every pooled view is linear in H~ (the attention logits too),
        so each view is computed per depth candidate and mixed with that response's alpha.
        """
        dtype = hidden_states.dtype
        # Stage I: depth candidates H(1)..H(K) (H0 first when included, or alone when K = 0).
        candidates = [hidden_states] if self.depth_router_include_input or not self.refinement_blocks else []
        refined = hidden_states
        for block in self.refinement_blocks:
            refined = block(refined, attention_mask)  # (B, L, D)
            candidates.append(refined)
        stacked = torch.stack(candidates, dim=1)  # (B, C, L, D)
        batch_size, num_candidates, seq_len, hidden_size = stacked.shape
        num_responses = response_masks.shape[1]
        if self.depth_router is None:
            depth_weights = None
            weights = torch.ones(batch_size, num_responses, 1, dtype=dtype, device=stacked.device)  # (B, N, 1)
        else:
            depth_logits = self.depth_router(masked_mean(hidden_states, context_masks)).float()  # (B, N, C)
            depth_weights = depth_logits.softmax(-1)
            weights = depth_weights.to(dtype)

        def mix(per_candidate: torch.Tensor) -> torch.Tensor:
            return torch.einsum("bnc,bncd->bnd", weights, per_candidate)  # (B, N, C, D) -> (B, N, D)

        # Stage II: pooled views of H~ for each response.
        views = {}
        if "last" in self.experts or self.pooling_router is not None:
            last_index = seq_len - 1 - response_masks.int().flip(-1).argmax(-1)  # (B, N)
            index = last_index[:, None, :, None].expand(batch_size, num_candidates, num_responses, hidden_size)
            views["last"] = mix(stacked.gather(2, index).transpose(1, 2))  # (B, N, D)
        if "mean" in self.experts or self.pooling_router is not None:
            response_weights = mean_weights(response_masks, dtype)  # (B, N, L)
            views["mean"] = mix(torch.einsum("bnl,bcld->bncd", response_weights, stacked))  # (B, N, C, D) -> (B, N, D)
        if self.attention_pool is not None:
            scope = context_masks if self.attention_pooling_scope == "all" else response_masks  # (B, N, L)
            candidate_logits = self.attention_pool(stacked).squeeze(-1).float()  # (B, C, L)
            logits = torch.einsum("bnc,bcl->bnl", weights.float(), candidate_logits)  # (B, N, L)
            beta = logits.masked_fill(~scope, float("-inf")).softmax(-1).to(dtype)  # (B, N, L)
            views["attention"] = mix(torch.einsum("bnl,bcld->bncd", beta, stacked))

        expert_scores = torch.cat([self.expert_heads[name](views[name]) for name in self.experts], -1)  # (B, N, E)
        if self.pooling_router is None:
            routing_weights = torch.ones_like(expert_scores, dtype=torch.float32)  # (B, N, 1)
        else:
            prompt_context = masked_mean(hidden_states, prompt_mask[:, None])  # (B, 1, D), zeros without a prompt
            prompt_context = prompt_context.expand(-1, num_responses, -1)
            router_input = torch.cat([views["last"], views["mean"], views["attention"], prompt_context], -1)
            routing_logits = self.pooling_router(router_input).float() / self.router_temperature  # (B, N, E)
            routing_weights = routing_logits.softmax(-1)
        reward = (routing_weights * expert_scores.float()).sum(-1)  # (B, N)
        return reward, expert_scores, routing_weights, depth_weights

    def score(self, hidden_states: torch.Tensor, layout: AdaJudgeLayout) -> AdaJudgeRewardOutput:
        """Rewards of backbone states H0 (B, L, D) read with `layout`: N * B output rows, response-major (all rows'
        response 1, then response 2, ...), in float32."""
        head_dtype = next(self.parameters()).dtype
        # Mixed precision, as Trainer's `bf16=True` does: fp32 heads behind a half-precision backbone run their matmuls
        # in that dtype (fp32 matmuls are many times slower on tensor-core GPUs). Half-precision heads (`.to(bf16)`)
        # take the states in their own dtype. Either way norms, masked means' weights, the routers' softmaxes and the
        # reward are computed in fp32.
        half = hidden_states.dtype in (torch.bfloat16, torch.float16) and head_dtype == torch.float32
        with torch.autocast(hidden_states.device.type, dtype=hidden_states.dtype, enabled=half):
            reward, expert_scores, routing_weights, depth_weights = self(
                hidden_states if half else hidden_states.to(head_dtype),
                layout.prompt_mask,
                layout.response_masks,
                layout.context_masks,
                layout.block_mask,
            )

        def responses_first(tensor: torch.Tensor) -> torch.Tensor:  # (B, N, ...) -> (N * B, ...)
            return tensor.transpose(0, 1).reshape(-1, *tensor.shape[2:])

        return AdaJudgeRewardOutput(
            logits=responses_first(reward).unsqueeze(-1),  # (N * B, 1)
            expert_scores=responses_first(expert_scores).float(),
            routing_weights=responses_first(routing_weights),
            depth_weights=None if depth_weights is None else responses_first(depth_weights),
        )


class AdaJudgePreTrainedModel(PreTrainedModel):
    config: AdaJudgeConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["AdaJudgeRefinementBlock"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    # The heads are small and start from scratch: keep them in fp32 when the backbone loads in bf16/fp16.
    _keep_in_fp32_modules_strict = ["judge_head"]

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, AdaJudgeZeroInitLinear):
            init.zeros_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)


class AdaJudgeForRewardModeling(AdaJudgePreTrainedModel):
    r"""
    AdaJudge reward model: returns one scalar reward per sequence as `logits` of shape `(batch_size, 1)`.

    The response is located, in order of preference, from `response_mask`, from `prompt_lengths`, from the last
    occurrence of `config.response_template` in each row, or else the whole sequence is treated as response (with a
    one-time warning). Token positions always come from `attention_mask`, never from the pad token id.

    Example:

    ```python
    >>> import adajudge_hf  # registers the Auto classes
    >>> from transformers import AutoModelForSequenceClassification, AutoTokenizer
    >>> model = AutoModelForSequenceClassification.from_pretrained("org/adajudge-qwen3-8b")
    >>> tokenizer = AutoTokenizer.from_pretrained("org/adajudge-qwen3-8b")
    >>> chat = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
    >>> inputs = tokenizer.apply_chat_template(chat, return_tensors="pt", return_dict=True)
    >>> reward = model(**inputs).logits[0, 0]
    ```
    """

    def __init__(self, config: AdaJudgeConfig):
        super().__init__(config)
        # Inside `backbone_only_loading` (from a backbone checkpoint) the missing heads and an unused LM head are expected.
        self._keys_to_ignore_on_load_missing, self._keys_to_ignore_on_load_unexpected = keys_to_ignore_on_load()
        self.model = AutoModel.from_config(config.text_config)
        self.judge_head = AdaJudgeHead(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.set_input_embeddings(value)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """`PreTrainedModel.from_pretrained` for every save form of a judge, safetensors only, non-finite weights refused.

        A full checkpoint (`model.safetensors`) loads as usual. A folder or Hub repo with `config.json` and
        `judge_head.safetensors` but no `model.safetensors` is the heads form: the backbone is loaded from
        `config.base_model_name_or_path` (override with `base_model_name_or_path=`), then the heads file; with an
        `adapter_config.json` next to them (the adapter form) the LoRA adapter is loaded through transformers' PEFT
        integration (`load_adapter`), as for any PEFT folder, and stays unmerged. So the Auto classes, `pipeline` and
        TRL open every form by path or repo id. `revision` / `subfolder` apply to the judge, not to its backbone.
        """
        return load_pretrained(cls, super().from_pretrained, pretrained_model_name_or_path, *model_args, **kwargs)

    @classmethod
    def from_backbone(
        cls,
        backbone_name_or_path: str | os.PathLike,
        tokenizer: PreTrainedTokenizerBase | None = None,
        **kwargs,
    ) -> "AdaJudgeForRewardModeling":
        """Build a judge around a pretrained backbone: backbone weights loaded, heads freshly initialised.

        `kwargs` that are `AdaJudgeConfig` fields configure the judge; the rest go to `from_pretrained` (e.g. `dtype`,
        `attn_implementation`, `revision`). The backbone's tokenizer (loaded from the same path when not given) sets
        `pad_token_id` and, when it has a chat template, the `response_template` used when no response mask is passed.

        Example: `AdaJudgeForRewardModeling.from_backbone("Qwen/Qwen3-8B", num_refinement_blocks=3, dtype="bfloat16")`
        """
        return load_from_backbone(cls, backbone_name_or_path, tokenizer, **kwargs)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        response_mask: torch.Tensor | None = None,
        prompt_lengths: torch.LongTensor | None = None,
        segment_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.FloatTensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> AdaJudgeRewardOutput | tuple:
        r"""
        response_mask (`torch.Tensor` of shape `(batch_size, sequence_length)`, *optional*):
            1 on response tokens, 0 on prompt and padding.
        prompt_lengths (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
            Number of prompt tokens among the valid tokens of each row (works for left and right padding).
        segment_ids (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
            Packed layout: each row is a shared prompt (segment 0) followed by N responses (segments 1..N, every row
            has all N). Each response sees the prompt and itself only, with positions restarting after the prompt, so
            the prompt is computed once and the rewards equal those of N separate [prompt; response] rows. The
            outputs then have N * batch_size rows, response-major: all rows' response 1, then response 2, ... (for
            preference pairs [prompt; chosen; rejected] that is TRL's chosen-then-rejected order). Needs causal
            refinement blocks and an eager or SDPA backbone; see `supports_packed_inputs`.
        labels (`torch.FloatTensor` of shape `(batch_size,)`, *optional*):
            Regression targets; gives an MSE `loss`. Preference training uses `AdaJudgeRewardTrainer` instead.

        Inputs longer than the backbone's `max_position_embeddings` are scored, with a one-time warning rather than an
        error: rotary backbones run there, but their rewards are unreliable. Truncate to that length.

        Other keyword arguments that trainers pass (`margin`, `output_attentions`, ...) are accepted and ignored; they
        are never forwarded to the backbone. `use_cache` is ignored: a reward model needs no KV cache.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("You must specify exactly one of `input_ids` or `inputs_embeds`.")
        if input_ids is not None:
            self._check_token_ids(input_ids)
        reference = input_ids if input_ids is not None else inputs_embeds[..., 0]
        valid_mask = valid_token_mask(reference, attention_mask)
        layout = AdaJudgeLayout.from_inputs(
            self.config, valid_mask, input_ids, response_mask, prompt_lengths, segment_ids
        )
        if position_ids is None:
            position_ids = layout.position_ids
        self._warn_beyond_max_positions(position_ids)
        if layout.block_mask is not None and segment_ids is not None:
            # Additive float mask: eager attention adds it to the scores, SDPA accepts it as is.
            backbone_dtype = self.model.get_input_embeddings().weight.dtype
            backbone_mask = torch.zeros(layout.block_mask.shape, dtype=backbone_dtype, device=valid_mask.device)
            backbone_mask.masked_fill_(~layout.block_mask, torch.finfo(backbone_dtype).min)
        elif layout.block_mask is None:
            backbone_mask = None  # no padding: the backbone takes its fast causal path
        else:
            backbone_mask = valid_mask.long()
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=backbone_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            use_cache=False,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        output = self.judge_head.score(outputs.last_hidden_state, layout)
        output.hidden_states = outputs.hidden_states
        if labels is not None:
            output.loss = F.mse_loss(output.logits.squeeze(-1), labels.float().view(-1))
        return output if return_dict is not False else output.to_tuple()

    def score_hidden_states(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        response_mask: torch.Tensor | None = None,
        prompt_lengths: torch.LongTensor | None = None,
        segment_ids: torch.LongTensor | None = None,
        input_ids: torch.LongTensor | None = None,
    ) -> AdaJudgeRewardOutput:
        """Run the heads on precomputed backbone states H0 (B, L, D), e.g. cached features of a frozen backbone.

        Takes the same boundary inputs as `forward` (`input_ids` only serves `config.response_template`) and gives the
        same outputs as `forward` on the tokens that produced `hidden_states`.
        """
        valid_mask = valid_token_mask(hidden_states[..., 0], attention_mask)
        layout = AdaJudgeLayout.from_inputs(
            self.config, valid_mask, input_ids, response_mask, prompt_lengths, segment_ids
        )
        return self.judge_head.score(hidden_states, layout)

    @property
    def supports_packed_inputs(self) -> bool:
        """Whether `segment_ids` (shared-prompt packing) applies: causal refinement and a backbone that takes 4-D masks."""
        return supports_packed_inputs(self.config)

    def _check_token_ids(self, input_ids: torch.Tensor) -> None:
        """Token ids beyond the embedding (a tokenizer larger than the judge's) fail deep inside it; name the fix."""
        vocab_size = self.config.get_text_config().vocab_size
        largest = int(input_ids.max())
        if largest >= vocab_size:
            raise ValueError(
                f"`input_ids` hold token id {largest}, but the judge's embedding has {vocab_size} rows: the tokenizer's "
                "vocabulary is larger than the model's. Use the tokenizer saved with the judge, or grow the embedding "
                "with `model.resize_token_embeddings(len(tokenizer))` (and train the new rows)."
            )

    def _warn_beyond_max_positions(self, position_ids: torch.Tensor) -> None:
        """Warn (once) when a position exceeds the backbone's `max_position_embeddings`: rotary backbones still run
        there but were never trained that far, so rewards degrade silently."""
        max_positions = getattr(self.config.get_text_config(), "max_position_embeddings", None)
        if max_positions is not None and int(position_ids.max()) >= max_positions:
            logger.warning_once(
                f"Inputs are longer than the backbone's max_position_embeddings ({max_positions}): positions past it "
                f"were never trained, so rewards of such rows are unreliable. Truncate inputs to {max_positions} "
                "tokens (e.g. `max_length` of the tokenizer or data collator)."
            )


__all__ = [
    "AdaJudgeForRewardModeling",
    "AdaJudgeHead",
    "AdaJudgeLayout",
    "AdaJudgePreTrainedModel",
    "AdaJudgeRewardOutput",
]
