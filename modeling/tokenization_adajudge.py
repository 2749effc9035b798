"""The chat-template facts a judge is built with: token ids of a rendered conversation and the assistant-turn header.

Travels with the model as remote code (`from_backbone` derives `config.response_template` here), so it imports only
transformers; `adajudge_hf.tokenization` encodes conversations through the same `chat_ids`.
"""

from typing import Any

from transformers import PreTrainedTokenizerBase


def chat_ids(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, Any]], add_generation_prompt: bool = False
) -> list[int]:
    """Token ids of `messages` rendered with the tokenizer's chat template."""
    # `apply_chat_template` returns a dict (transformers >= 5) or a list depending on version and arguments.
    encoded = tokenizer.apply_chat_template(
        messages, tokenize=True, add_generation_prompt=add_generation_prompt, return_dict=True
    )
    return list(encoded["input_ids"])


def find_response_template(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Token ids of the assistant-turn header of `tokenizer.chat_template`, as they appear inside a conversation.

    The header is what `add_generation_prompt=True` appends to a rendered prompt (e.g. `<|im_start|>assistant\\n`),
    so it is derived from the template itself rather than hard-coded per model family. Trailing header tokens that
    the tokenizer merges with the start of a response are dropped, so the ids match inside real conversations.
    """
    if tokenizer.chat_template is None:
        raise ValueError("The tokenizer has no chat template, so there is no assistant header to find.")
    probe = [{"role": "user", "content": "Is this a question?"}]
    prompt_only = chat_ids(tokenizer, probe)
    with_header = chat_ids(tokenizer, probe, add_generation_prompt=True)
    conversation = chat_ids(tokenizer, probe + [{"role": "assistant", "content": "Yes, it is."}])
    # Some templates end a prompt-only rendering with extra tokens (Phi-3 appends EOS), so compare common prefixes.
    start = next((i for i, (a, b) in enumerate(zip(prompt_only, with_header)) if a != b), len(prompt_only))
    header = with_header[start:]
    while header and conversation[start : start + len(header)] != header:
        header = header[:-1]
    if not header or not tokenizer.decode(header).strip():
        raise ValueError(
            "Could not find an assistant-turn header in the tokenizer's chat template (`add_generation_prompt=True` "
            "adds nothing that also opens the assistant turn inside a conversation). Without it the judge cannot find "
            "the response in texts rendered by other tools (e.g. TRL's GRPO/RLOO). Pass `response_template=[...]` "
            "(the token ids that open a response) explicitly, or use a chat template with a generation prompt."
        )
    return header


__all__ = ["chat_ids", "find_response_template"]
