"""Turn (prompt, response) into token ids while keeping the prompt/response boundary.

TRL tokenises prompt + response as one text and forgets where the prompt ended; AdaJudge needs that boundary for
its prompt context z_P and its response experts. Both training and scoring encode through `encode_prompt_response`,
so a judge sees the same tokens in both.
"""

from dataclasses import dataclass
from typing import Any

from transformers import PreTrainedTokenizerBase


Messages = list[dict[str, Any]]


@dataclass
class EncodedExample:
    """Token ids of prompt + response, the number of prompt tokens, and whether `max_length` cut the example."""

    input_ids: list[int]
    prompt_length: int
    truncated: bool = False


def _chat_ids(tokenizer: PreTrainedTokenizerBase, messages: Messages, add_generation_prompt: bool) -> list[int]:
    # `apply_chat_template` returns a dict (transformers >= 5) or a list depending on version and arguments.
    encoded = tokenizer.apply_chat_template(
        messages, tokenize=True, add_generation_prompt=add_generation_prompt, return_dict=True
    )
    return list(encoded["input_ids"])


def encode_prompt_response(
    tokenizer: PreTrainedTokenizerBase,
    prompt: str | Messages | None,
    response: str | Messages,
    max_length: int | None = None,
) -> EncodedExample:
    """Encode one example; conversational inputs (lists of messages) go through the tokenizer's chat template.

    Plain text is encoded as `tokenizer(prompt) + tokenizer(response, add_special_tokens=False) + [eos]` (TRL adds the
    EOS too), tokenised separately so the boundary is exact. Chat inputs are rendered once with the chat template; the
    prompt rendered with the generation prompt must be a prefix of the full rendering, else the boundary is unknown and
    a `ValueError` says so. Over `max_length`, the prompt is cut from the left (keeping a leading BOS) and the end of
    the response, where a reward model reads, is kept.
    """
    if isinstance(response, str) and not response.strip():
        raise ValueError("Empty response: a reward model needs a non-empty response to score. Drop or fix this row.")
    if isinstance(response, list):
        if tokenizer.chat_template is None:
            raise ValueError(
                "Conversational data (lists of messages) needs a tokenizer with a chat template, and this tokenizer "
                "has none. Set `tokenizer.chat_template` (or pass `chat_template_path`), or provide plain-text data."
            )
        if not response or not any(str(message.get("content", "")).strip() for message in response):
            raise ValueError("Empty response: the response messages have no content. Drop or fix this row.")
        prompt_messages = list(prompt or [])
        input_ids = _chat_ids(tokenizer, prompt_messages + list(response), add_generation_prompt=False)
        prompt_ids = _chat_ids(tokenizer, prompt_messages, add_generation_prompt=True) if prompt_messages else []
        if input_ids[: len(prompt_ids)] != prompt_ids:
            raise ValueError(
                "The chat template renders the prompt differently on its own than inside the full conversation, so "
                "the prompt/response boundary is unknown. Use a chat template whose rendering of the prompt (with "
                "`add_generation_prompt=True`) is a prefix of the rendering of prompt + response."
            )
        prompt_length = len(prompt_ids)
    else:
        if isinstance(prompt, list):
            raise ValueError("Mixed formats: the prompt is a list of messages but the response is plain text.")
        prompt_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"] if prompt else []
        response_ids = tokenizer(response, add_special_tokens=not prompt)["input_ids"]
        if tokenizer.eos_token_id is not None and (not response_ids or response_ids[-1] != tokenizer.eos_token_id):
            response_ids = response_ids + [tokenizer.eos_token_id]
        input_ids, prompt_length = list(prompt_ids) + list(response_ids), len(prompt_ids)
    return truncate_left(input_ids, prompt_length, max_length, tokenizer.bos_token_id)


def truncate_left(
    input_ids: list[int], prompt_length: int, max_length: int | None, bos_token_id: int | None = None
) -> EncodedExample:
    """Fit `input_ids` into `max_length` by cutting the prompt from the left, then the start of the response."""
    if max_length is None or len(input_ids) <= max_length:
        return EncodedExample(input_ids, prompt_length)
    keep_bos = bos_token_id is not None and prompt_length > 0 and input_ids[0] == bos_token_id
    head = input_ids[:1] if keep_bos else []
    excess = len(input_ids) - max_length
    prompt_body = input_ids[len(head) : prompt_length]
    if excess <= len(prompt_body):
        kept_prompt = head + prompt_body[excess:]
        return EncodedExample(kept_prompt + input_ids[prompt_length:], len(kept_prompt), truncated=True)
    # Even the bare response is too long: keep its end, which is where the last-token expert reads.
    return EncodedExample(input_ids[-max_length:], 0, truncated=True)
