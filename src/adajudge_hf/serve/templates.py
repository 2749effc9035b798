"""Turn what reward clients send into token ids the judge reads, with the prompt/response boundary kept.

OpenRLHF posts `query` = prompt + response rendered with the *policy's* chat template (decoded with the special
tokens kept) and, optionally, the `prompts` it started from. Two cases:

- Same template as the judge (the default): the query is scored as is. Its tokens are the tokenisation of the whole
  text (what OpenRLHF's `serve_rm` and TRL's model path do); the boundary is where the prompt's tokens end when the
  query starts with its prompt, else the judge finds the response from `config.response_template`.
- A different policy template (`--policy-tokenizer`): the conversation is recovered from the text by inverting the
  policy's chat template (`ChatTemplateParser`: the text the template puts around each role's content is learnt by
  rendering probe conversations), then rendered with the judge's template through `encode_prompt_response`, exactly
  as in-process scoring encodes that conversation.

Pairs given as text or messages (`/score`, the TRL reward function) go through `encode_prompt_response` as the
in-process scorer does. Over-long items are cut like the scorer cuts them (`truncate_left`) or refused.
"""

from dataclasses import dataclass
from typing import Any

from transformers import PreTrainedTokenizerBase

from ..tokenization import Messages, align_formats, encode_prompt_response, truncate_left


ROLES = ("system", "user", "assistant")
_PROBES = ("ADAJUDGEPROBEA", "ADAJUDGEPROBEB", "ADAJUDGEPROBEC")


class ItemTooLong(ValueError):
    """An item longer than `max_length` while the server refuses over-long items (HTTP 413)."""


@dataclass
class ServeItem:
    """Token ids of one item; `prompt_length` None when the boundary is left to the judge's response template."""

    input_ids: list[int]
    prompt_length: int | None
    truncated: bool = False


def _common_suffix(a: str, b: str) -> str:
    size = 0
    while size < min(len(a), len(b)) and a[-1 - size] == b[-1 - size]:
        size += 1
    return a[len(a) - size :]


def _split_probes(text: str, probes: tuple[str, ...]) -> list[str]:
    """The pieces of `text` around the probe contents, in order; a ValueError if a probe is missing."""
    pieces = []
    for probe in probes:
        if probe not in text:
            raise ValueError("the chat template drops or alters message contents")
        before, text = text.split(probe, 1)
        pieces.append(before)
    return pieces + [text]


class ChatTemplateParser:
    """Recover the messages of a text rendered with a tokenizer's chat template.

    The template is rendered on probe conversations; what it writes before the first message (`preamble`) and around
    each role's content (`prefixes`, `suffixes`) is read off between the probes. Parsing walks the text with those
    markers. The last message may lack its suffix (a generation that stopped at the end-of-turn token, or was cut);
    trailing special tokens (EOS, padding) are dropped from it.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase):
        if tokenizer.chat_template is None:
            raise ValueError("The policy tokenizer has no chat template, so its texts cannot be parsed into messages.")
        self.special_tokens = sorted((t for t in tokenizer.all_special_tokens if t), key=len, reverse=True)

        def render(messages: list[tuple[str, str]], generation: bool = False) -> str:
            chat = [{"role": role, "content": content} for role, content in messages]
            return tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=generation)

        a, b, c = _PROBES
        try:
            before_a, between_ab, between_bc, _ = _split_probes(
                render([("user", a), ("assistant", b), ("user", c)]), _PROBES
            )
            _, after_a = _split_probes(render([("user", a)]), (a,))
        except Exception as error:
            raise ValueError(f"Cannot invert the policy chat template: {error}.") from error
        user_prefix = _common_suffix(before_a, between_bc)
        # "<|begin_of_text|>" and "<|eot_id|>" share "|>": start the header where a special token or a line ends.
        while user_prefix and not (
            len(user_prefix) == len(before_a)
            or before_a[: len(before_a) - len(user_prefix)].endswith(tuple(self.special_tokens) + ("\n",))
        ):
            user_prefix = user_prefix[1:]
        self.preamble = before_a[: len(before_a) - len(user_prefix)]
        assistant_suffix = between_bc[: len(between_bc) - len(user_prefix)]
        user_suffix = after_a
        while user_suffix and not between_ab.startswith(user_suffix):  # what follows every user turn
            user_suffix = user_suffix[:-1]
        self.prefixes = {"user": user_prefix, "assistant": between_ab[len(user_suffix) :]}
        self.suffixes = {"user": user_suffix, "assistant": assistant_suffix}
        try:  # a system turn is optional: some templates fold it into the first user turn or refuse it
            before_s, between_sa, _ = _split_probes(render([("system", c), ("user", a)]), (c, a))
            if before_s.startswith(self.preamble) and between_sa.endswith(user_prefix):
                self.prefixes["system"] = before_s[len(self.preamble) :]
                self.suffixes["system"] = between_sa[: len(between_sa) - len(user_prefix)]
        except Exception:
            pass
        if not all(self.prefixes.values()) or not all(self.suffixes.values()):
            raise ValueError(
                "Cannot invert the policy chat template: it writes no marker around some role's content "
                f"(prefixes {self.prefixes}, suffixes {self.suffixes})."
            )
        probe = [("user", "Hello there, how are you?"), ("assistant", "Fine, thanks.")]
        if self.parse(render(probe)) != [{"role": r, "content": t} for r, t in probe]:
            raise ValueError("Cannot invert the policy chat template: a probe conversation does not parse back.")

    def _strip_trailing_specials(self, text: str) -> str:
        stripped = True
        while stripped:
            stripped = False
            for token in self.special_tokens:
                if text.endswith(token):
                    text, stripped = text[: -len(token)], True
        return text

    def parse(self, text: str) -> Messages:
        """The messages of `text`; a ValueError that says where the text leaves the template."""
        position = len(self.preamble) if text.startswith(self.preamble) else 0
        messages = []
        while position < len(text):
            if not self._strip_trailing_specials(text[position:]).strip():
                break  # only the template's tail, EOS or padding is left
            role = next((r for r in ROLES if r in self.prefixes and text.startswith(self.prefixes[r], position)), None)
            if role is None:
                raise ValueError(
                    f"The text does not follow the policy chat template at character {position} "
                    f"({text[position : position + 40]!r}); expected one of the role headers "
                    f"{sorted(set(self.prefixes.values()))}."
                )
            position += len(self.prefixes[role])
            end = text.find(self.suffixes[role], position)
            if end == -1:  # the last turn, cut or ended by a bare end-of-turn token
                messages.append({"role": role, "content": self._strip_trailing_specials(text[position:])})
                break
            messages.append({"role": role, "content": text[position:end]})
            position = end + len(self.suffixes[role])
        return messages


class ItemEncoder:
    """Encode the items of every endpoint with the judge's tokenizer; cut or refuse those over `max_length`."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        max_length: int | None = None,
        refuse_overlong: bool = False,
        policy_tokenizer: PreTrainedTokenizerBase | None = None,
    ):
        if max_length is not None and max_length < 2:
            raise ValueError(f"`max_length` must be >= 2, got {max_length}.")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.refuse_overlong = refuse_overlong
        self.policy_parser = ChatTemplateParser(policy_tokenizer) if policy_tokenizer is not None else None

    def _fit(self, input_ids: list[int], prompt_length: int | None) -> ServeItem:
        if self.max_length is None or len(input_ids) <= self.max_length:
            return ServeItem(list(input_ids), prompt_length)
        if self.refuse_overlong:
            raise ItemTooLong(
                f"item has {len(input_ids)} tokens, more than max_length={self.max_length}; shorten it (or start the "
                "server with `--overlong truncate` to cut the start of the prompt)"
            )
        cut = truncate_left(input_ids, prompt_length or 0, self.max_length, self.tokenizer.bos_token_id)
        return ServeItem(cut.input_ids, cut.prompt_length if prompt_length is not None else None, truncated=True)

    def from_pair(self, prompt: str | Messages | None, response: str | Messages) -> ServeItem:
        """A (prompt, response) as `score_responses` encodes it (text, or messages through the judge's template)."""
        if self.policy_parser is not None and isinstance(prompt, str) and isinstance(response, str):
            return self.from_query(prompt + response, prompt)
        encoded = encode_prompt_response(self.tokenizer, *align_formats(prompt, response))
        return self._fit(encoded.input_ids, encoded.prompt_length)

    def from_query(self, query: str, prompt: str | None = None) -> ServeItem:
        """An OpenRLHF query (prompt + response in the policy's template) and its prompt, if given."""
        if prompt is not None and not query.startswith(prompt):
            raise ValueError("the query does not start with its prompt; send the prompt the query was generated from")
        if self.policy_parser is not None:
            messages = self.policy_parser.parse(query)
            if not messages or messages[-1]["role"] != "assistant":
                raise ValueError("the query has no assistant turn at its end to score")
            return self.from_pair(messages[:-1], messages[-1:])
        input_ids = self.tokenizer(query, add_special_tokens=False)["input_ids"]
        prompt_length = None
        if prompt:
            prompt_ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
            if input_ids[: len(prompt_ids)] == prompt_ids and len(prompt_ids) < len(input_ids):
                prompt_length = len(prompt_ids)
        if not input_ids or (prompt_length is None and prompt and query == prompt):
            raise ValueError("empty response: the query holds nothing after its prompt")
        return self._fit(input_ids, prompt_length)

    def from_text(self, text: str) -> ServeItem:
        """A vLLM `/classify` input: the text as is, special tokens added as vLLM adds them."""
        input_ids = self.tokenizer(text)["input_ids"]
        if not input_ids:
            raise ValueError("empty input")
        return self._fit(input_ids, None)


def as_messages(value: Any) -> str | Messages:
    """Pass text through; check a list of messages has role and content strings."""
    if isinstance(value, str):
        return value
    for message in value:
        if not isinstance(message.get("role"), str) or not isinstance(message.get("content"), str):
            raise ValueError("each message needs a 'role' and a 'content' string")
    return value
