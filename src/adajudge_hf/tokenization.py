"""Turn (prompt, response) into token ids while keeping the prompt/response boundary.

TRL tokenises prompt + response as one text and forgets where the prompt ended; AdaJudge needs that boundary for
its prompt context z_P and its response experts. Both training and scoring encode through `encode_prompt_response`,
so a judge sees the same tokens in both.

How the boundary relates to tokenising the rendered whole (what TRL's GRPO/RLOO reward path and `pipeline` do):

- Conversations: the whole conversation is rendered and tokenised once, so the ids are exactly
  `tokenizer(apply_chat_template(prompt + response, tokenize=False), add_special_tokens=False)`, GRPO's reward input.
- Plain text: `tokenizer(prompt) + tokenizer(response, add_special_tokens=False) + [eos]`. This equals
  `tokenizer(prompt + response)` (+ EOS) when the response starts where the tokenizer's pre-tokenizer splits anyway
  (TRL's convention: the response carries its leading space, " Paris."). Otherwise BPE can merge across the boundary
  in the whole text ("... is " + "Paris." gives "is", " ", "Par", "is" here but "is", " Paris" whole): the decoded
  text is the same, the tokens next to the boundary differ. GRPO also adds no EOS to plain text. Judges meant to
  score plain text at inference should be trained on responses that start with a space, or on conversations.
"""

from dataclasses import dataclass
from typing import Any

from transformers import PreTrainedTokenizerBase

from .modeling.tokenization_adajudge import chat_ids


Messages = list[dict[str, Any]]


@dataclass
class EncodedExample:
    """Token ids of prompt + response, the number of prompt tokens, and whether `max_length` cut the example.

    `prompt_length` is None only for a served text whose boundary is left to the judge's response template."""

    input_ids: list[int]
    prompt_length: int | None
    truncated: bool = False


def align_formats(
    prompt: str | Messages | None, response: str | Messages
) -> tuple[str | Messages | None, str | Messages]:
    """Bring a plain-text side into the format of a conversational other side, so no part is silently dropped.

    A plain response to a conversational prompt becomes one assistant turn; a plain prompt before a conversational
    response becomes one user turn. An empty prompt ("" or []) is no prompt.
    """
    if not prompt:
        return None, response
    if isinstance(prompt, list) and isinstance(response, str):
        return prompt, [{"role": "assistant", "content": response}]
    if isinstance(prompt, str) and isinstance(response, list):
        return [{"role": "user", "content": prompt}], response
    return prompt, response


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
        input_ids = chat_ids(tokenizer, prompt_messages + list(response), add_generation_prompt=False)
        prompt_ids = chat_ids(tokenizer, prompt_messages, add_generation_prompt=True) if prompt_messages else []
        if input_ids[: len(prompt_ids)] != prompt_ids:
            raise ValueError(
                "The chat template renders the prompt differently on its own than inside the full conversation, so "
                "the prompt/response boundary is unknown. Use a chat template whose rendering of the prompt (with "
                "`add_generation_prompt=True`) is a prefix of the rendering of prompt + response."
            )
        prompt_length = len(prompt_ids)
    else:
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
    return truncate_shared_prompt([(input_ids, prompt_length)], max_length, bos_token_id)[0]


def truncate_shared_prompt(
    rows: list[tuple[list[int], int]], max_length: int | None, bos_token_id: int | None = None
) -> list[EncodedExample]:
    """Fit rows that answer one prompt (a chosen/rejected pair, best-of-N) into `max_length`, cutting the prompt once.

    `rows` are (input_ids, prompt_length). The prompt budget is set by the longest response, so every row keeps the
    same number of trailing prompt tokens (the same tokens when the rows share their prompt, as pairs do): the judge
    compares responses on one context. A leading BOS stays. A response too long on its own keeps its end, which is
    where the last-token expert reads, after the BOS. With no row over `max_length` nothing is cut.
    """
    if max_length is None or all(len(ids) <= max_length for ids, _ in rows):
        return [EncodedExample(list(ids), prompt_length) for ids, prompt_length in rows]
    heads = [
        1 if bos_token_id is not None and prompt_length > 0 and ids[0] == bos_token_id and max_length > 1 else 0
        for ids, prompt_length in rows
    ]
    longest_response = max(len(ids) - prompt_length for ids, prompt_length in rows)
    budget = max(max_length - max(heads) - longest_response, 0)  # prompt tokens every row keeps after its BOS
    encoded = []
    for (ids, prompt_length), head in zip(rows, heads):
        body = ids[head:prompt_length]
        prompt = ids[:head] + body[max(len(body) - budget, 0) :] if budget else ids[:head]
        response = ids[prompt_length:][-(max_length - len(prompt)) :]
        encoded.append(
            EncodedExample(prompt + response, len(prompt), truncated=len(prompt) + len(response) < len(ids))
        )
    return encoded
