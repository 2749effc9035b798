"""Tiny, offline, random backbones and tokenizers for tests, smoke runs and examples.

Everything is built locally in about a second: a byte-level BPE tokenizer trained on a few sentences, with a real
chat template and a pad token distinct from the end-of-turn token, and a 2-layer random decoder. `free_port` gives
the local servers and process groups of tests and benchmarks a port of their own.
"""

import socket
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast, Qwen3Config

from .modeling import AdaJudgeConfig, AdaJudgeForRewardModeling


CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
LLAMA3_TEMPLATE = (
    "<|begin_of_text|>{% for message in messages %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{{ message['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
PHI3_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% else %}<|endoftext|>{% endif %}"
)
CHAT_TEMPLATES = {"chatml": CHATML_TEMPLATE, "llama3": LLAMA3_TEMPLATE, "phi3": PHI3_TEMPLATE}
_SPECIAL_TOKENS = {
    "chatml": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
    "llama3": ["<|end_of_text|>", "<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
    "phi3": ["<|endoftext|>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"],
}
_PAD_AND_EOS = {
    "chatml": ("<|endoftext|>", "<|im_end|>"),
    "llama3": ("<|end_of_text|>", "<|eot_id|>"),
    "phi3": ("<|endoftext|>", "<|end|>"),
}
_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "A reward model scores how good a response is for a prompt.",
    "What is the capital of France? The capital of France is Paris.",
    "def add(a, b):\n    return a + b\n",
    "I cannot help with that request, but here is a safer alternative.",
    "Human: How do I bake bread? Assistant: Mix flour, water, salt and yeast, then knead and bake.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100. Symbols: + - * / = ( ) [ ] { } < > | # ! ? , ; :",
    "good bad correct wrong yes no helpful harmful polite rude short long answer question user assistant system",
]


def make_tiny_tokenizer(template: str = "chatml", vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with the given chat-template family ("chatml", "llama3" or "phi3")."""
    specials = _SPECIAL_TOKENS[template]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(_CORPUS * 4, trainer=trainer)
    pad, eos = _PAD_AND_EOS[template]
    bos = "<|begin_of_text|>" if template == "llama3" else None
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token=pad, eos_token=eos, bos_token=bos, chat_template=CHAT_TEMPLATES[template]
    )


def make_tiny_backbone_config(
    tokenizer: PreTrainedTokenizerFast, family: str = "qwen3", hidden_size: int = 32
) -> Qwen3Config | LlamaConfig:
    """A 2-layer random decoder config sized to `tokenizer` ("qwen3" or "llama")."""
    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=hidden_size // 4,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        tie_word_embeddings=True,
    )
    if family == "llama":
        return LlamaConfig(**common)
    config = Qwen3Config(**common)
    config.layer_types = config.layer_types[
        : config.num_hidden_layers
    ]  # transformers builds it from the default depth
    return config


def make_tiny_judge_config(tokenizer: PreTrainedTokenizerFast, **judge_kwargs) -> AdaJudgeConfig:
    """An `AdaJudgeConfig` around a tiny Qwen3 backbone; `judge_kwargs` override the head settings."""
    judge_kwargs.setdefault("head_hidden_size", 16)
    judge_kwargs.setdefault("num_refinement_blocks", 2)
    return AdaJudgeConfig(
        text_config=make_tiny_backbone_config(tokenizer), pad_token_id=tokenizer.pad_token_id, **judge_kwargs
    )


def make_tiny_judge(
    tokenizer: PreTrainedTokenizerFast, seed: int = 0, random_heads: bool = False, **judge_kwargs
) -> AdaJudgeForRewardModeling:
    """A tiny random judge (`make_tiny_judge_config(tokenizer, **judge_kwargs)`) in eval mode, the same for the same
    `seed`. Its heads are initialised as for training (zero output layers) unless `random_heads`: see
    `randomize_head`."""
    torch.manual_seed(seed)
    judge = AdaJudgeForRewardModeling(make_tiny_judge_config(tokenizer, **judge_kwargs)).eval()
    return randomize_head(judge, seed=seed) if random_heads else judge


def randomize_head(model: AdaJudgeForRewardModeling, seed: int = 0, std: float = 0.2) -> AdaJudgeForRewardModeling:
    """Give every head parameter random non-zero values, so zero-initialised paths are exercised too."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.judge_head.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)
    return model


def save_tiny_causal_lm(directory: str | Path, template: str = "chatml", seed: int = 0) -> Path:
    """Save a tiny random causal LM with its tokenizer, laid out like a Hub checkpoint (e.g. `Qwen/Qwen3-8B`)."""
    directory = Path(directory)
    tokenizer = make_tiny_tokenizer(template)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(make_tiny_backbone_config(tokenizer))
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (for a local server or a `torch.distributed` rendezvous)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
