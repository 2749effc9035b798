"""AdaJudge as a vLLM pooling model: vLLM's own backbone, then the transformers model's heads on every sequence.

The backbone is the vLLM class of the judge's `text_config` (Llama, Qwen3, ... whatever vLLM's registry resolves for
that model type), built without its LM head. Its last hidden states H0 of each finished sequence go to the very
`AdaJudgeHead` of `adajudge_hf.modeling` through its public interface, `AdaJudgeLayout.from_inputs` (response located
after `config.response_template`) and `AdaJudgeHead.score`, as the transformers model does, so the reward is the
transformers reward. It is served as the `classify` task with one label and no activation: `/classify`, `/pooling`
and `LLM.classify` return raw rewards.

Shapes: T tokens of a step (all sequences concatenated), B sequences, L longest sequence, D hidden size.
"""

from collections.abc import Callable, Iterable, Set

import torch
from torch import nn
from torch.nn.utils.rnn import pad_sequence
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
from vllm.config import VllmConfig
from vllm.model_executor.layers.logits_processor import LogitsProcessor
from vllm.model_executor.layers.pooler import DispatchPooler, PoolingParamsUpdate
from vllm.model_executor.layers.pooler.seqwise import SequencePoolingMethod, pooler_for_classify
from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead
from vllm.model_executor.models.interfaces_base import default_pooling_type
from vllm.model_executor.models.utils import (
    AutoWeightsLoader,
    StageMissingLayer,
    WeightsMapper,
    init_vllm_registered_model,
    maybe_prefix,
    no_init_weights,
)
from vllm.sequence import IntermediateTensors
from vllm.v1.pool.metadata import PoolingMetadata

from ..modeling.configuration_adajudge import AdaJudgeConfig
from ..modeling.loading_adajudge import folder_form
from ..modeling.modeling_adajudge import AdaJudgeHead, AdaJudgeLayout


MERGE_FIRST = (
    "vLLM loads full AdaJudge checkpoints only (config.json + model.safetensors). Merge the judge first: "
    "`judge = adajudge_hf.load_judge(path)` then `adajudge_hf.save_judge(judge, out_dir, form='full', "
    "tokenizer=tokenizer)`, and serve out_dir."
)


def refuse_split_checkpoint(model_path: str) -> None:
    """Raise a ValueError for the heads and adapter forms, whose backbone is not in the folder."""
    form = folder_form(model_path)
    if form in ("heads", "adapter"):
        raise ValueError(f"{model_path} holds a judge in the {form!r} form (no backbone weights). {MERGE_FIRST}")


def causal_lm_architecture(text_config) -> str:
    """vLLM architecture that implements the backbone: the causal LM of its model type (its LM head is dropped)."""
    name = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(text_config.model_type)
    if name is None and text_config.architectures:
        name = text_config.architectures[0]
    if name is None:
        raise ValueError(
            f"No causal-LM architecture is known for backbone model type {text_config.model_type!r}, so vLLM cannot "
            "build it. Set `text_config.architectures` in config.json to the backbone's *ForCausalLM class."
        )
    return name


class AdaJudgeRewardPooling(SequencePoolingMethod):
    """Hands every token state and token id of each finished sequence to the judge's heads; one reward each.

    The heads read all tokens of a sequence at once, so a step must hold whole sequences: the model's default MEAN
    pooling type makes vLLM turn chunked prefill and prefix caching off (as for its own MEAN-pooling models).
    """

    def __init__(self, score: Callable[[list[torch.Tensor], list[torch.Tensor]], torch.Tensor]):
        super().__init__()
        self.score = score  # a bound method of the model: the heads stay registered there, once

    def get_supported_tasks(self) -> Set[str]:
        return {"classify"}

    def get_pooling_updates(self, task: str) -> PoolingParamsUpdate:
        return PoolingParamsUpdate(requires_token_ids=True)

    def forward(self, hidden_states: torch.Tensor, pooling_metadata: PoolingMetadata) -> torch.Tensor:
        cursor = pooling_metadata.get_pooling_cursor()
        if cursor.is_partial_prefill():
            raise RuntimeError(
                "AdaJudge scores a sequence from all of its tokens, but this step holds only part of one (chunked "
                "prefill or a prefix-cache hit). Start vLLM without --enable-chunked-prefill / "
                "--enable-prefix-caching and keep the default pooler config."
            )
        states = list(torch.split(hidden_states, cursor.num_scheduled_tokens_cpu.tolist()))  # B x (L_b, D)
        return self.score(states, pooling_metadata.get_prompt_token_ids_cpu())  # (B, 1)


@default_pooling_type(seq_pooling_type="MEAN")
class AdaJudgeForRewardModeling(nn.Module):
    """vLLM pooling model of an AdaJudge checkpoint saved in the full form."""

    is_pooling_model = True
    # Checkpoint names: `model.*` is the transformers base model, `judge_head.*` the heads.
    hf_to_vllm_mapper = WeightsMapper(orig_to_new_prefix={"model.": "language_model.model."})

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        super().__init__()
        model_config = vllm_config.model_config
        refuse_split_checkpoint(model_config.model)
        config = model_config.hf_config
        if not isinstance(config, AdaJudgeConfig):
            raise TypeError(f"Expected an AdaJudgeConfig, got {type(config).__name__}.")
        if config.problem_type is None:
            config.problem_type = "regression"  # raw rewards: vLLM applies a sigmoid to 1-label classifiers otherwise
        self.config = config
        text_config = config.get_text_config()
        with no_init_weights(
            self, lambda module: StageMissingLayer("output", module), targets=(LogitsProcessor, ParallelLMHead)
        ):
            self.language_model = init_vllm_registered_model(
                vllm_config,
                hf_config=text_config,
                prefix=maybe_prefix(prefix, "language_model"),
                architectures=[causal_lm_architecture(text_config)],
            )
        # Heads in fp32 behind any backbone dtype, as `from_pretrained` keeps them (`_keep_in_fp32_modules_strict`).
        self.judge_head = AdaJudgeHead(config).to(torch.float32)
        pooler_config = model_config.pooler_config
        self.pooler = DispatchPooler(
            {"classify": pooler_for_classify(pooler_config, pooling=AdaJudgeRewardPooling(self.rewards))}
        )

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.language_model.embed_input_ids(input_ids)

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors: IntermediateTensors | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor | IntermediateTensors:
        """Backbone states H0 (T, D) of every scheduled token; the pooler scores them."""
        return self.language_model(input_ids, positions, intermediate_tensors, inputs_embeds)

    def rewards(self, states: list[torch.Tensor], token_ids: list[torch.Tensor]) -> torch.Tensor:
        """Rewards (B, 1) of B whole sequences, from their states B x (L_b, D) and token ids B x (L_b,)."""
        device = states[0].device
        hidden_states = pad_sequence(states, batch_first=True)  # (B, L, D), right padding
        input_ids = pad_sequence([ids.to(device) for ids in token_ids], batch_first=True)  # (B, L)
        lengths = torch.tensor([len(s) for s in states], device=device)
        valid_mask = torch.arange(hidden_states.shape[1], device=device)[None] < lengths[:, None]  # (B, L)
        # The transformers model's layout and heads, as they are: one source of truth for the reward.
        layout = AdaJudgeLayout.from_inputs(self.config, valid_mask, input_ids=input_ids)
        return self.judge_head.score(hidden_states, layout).logits  # (B, 1), fp32

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        loaded = AutoWeightsLoader(self).load_weights(weights, mapper=self.hf_to_vllm_mapper)
        if not any(name.startswith("language_model.") for name in loaded):
            raise ValueError(f"{self.config._name_or_path or 'The checkpoint'} has no backbone weights. {MERGE_FIRST}")
        return loaded
