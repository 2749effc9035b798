"""Turn what reward clients send into the tokens the judge was trained on, with the prompt/response boundary kept.

RL clients send text rendered with the *policy's* chat template and cut where generation stopped: OpenRLHF's query
is `decode(prompt_ids + output_ids)` and ends at the generated end-of-turn token (`...Paris.<|im_end|>`, not the
template's `...Paris.<|im_end|>\\n`), or mid-word when `max_tokens` cut it; verl strips a leading BOS; slime's
response keeps the EOS text. The judge was trained on its own template's rendering of whole conversations, so the
reward of the text as sent is not the judge's reward of the conversation.

By default the conversation is recovered from the text (`ChatTemplateParser`: the judge's own template, then the
`--policy-tokenizer`'s, then the known template families ChatML, Llama-3, Mistral, Gemma and Phi-3) and scored as the
judge's template renders it, through `encode_prompt_response`, exactly as `score_responses` encodes that
conversation. A text no parser recognises is scored as is and reported (`scored_as_is`). With `recover=False`
(`adajudge serve --score-as-is`) every text is scored exactly as sent.

Over-long items are cut like the scorer cuts them (`truncate_left`) or refused.
"""

import logging
from collections.abc import Callable

from jinja2.sandbox import ImmutableSandboxedEnvironment
from transformers import PreTrainedTokenizerBase

from ..tokenization import EncodedExample, Messages, align_formats, encode_prompt_response, truncate_left


logger = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant")
_PROBES = ("ADAJUDGEPROBEA", "ADAJUDGEPROBEB", "ADAJUDGEPROBEC")

# Chat-template families recognised without the policy's tokenizer: (template, special tokens, variables).
KNOWN_TEMPLATES = {
    "chatml": (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
        ("<|im_start|>", "<|im_end|>", "<|endoftext|>"),
    ),
    "llama3": (
        "<|begin_of_text|>{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
        "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
        "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}",
        (
            "<|begin_of_text|>",
            "<|end_of_text|>",
            "<|eot_id|>",
            "<|eom_id|>",
            "<|start_header_id|>",
            "<|end_header_id|>",
        ),
    ),
    "mistral": (
        "<s>{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
        "{% elif m['role'] == 'assistant' %} {{ m['content'] }}</s>{% endif %}{% endfor %}",
        ("<s>", "</s>"),
    ),
    "gemma": (
        "<bos>{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
        "{{ m['content'] | trim }}<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n"
        "{% endif %}",
        ("<bos>", "<eos>", "<pad>", "<start_of_turn>", "<end_of_turn>"),
    ),
    "phi3": (
        "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>\n{% else %}<|endoftext|>{% endif %}",
        ("<|user|>", "<|assistant|>", "<|system|>", "<|end|>", "<|endoftext|>"),
    ),
}


class ItemTooLong(ValueError):
    """An item longer than `max_length` while the server refuses over-long items (HTTP 413)."""


def _common_suffix(a: str, b: str) -> str:
    size = 0
    while size < min(len(a), len(b)) and a[-1 - size] == b[-1 - size]:
        size += 1
    return a[len(a) - size :]


def strip_trailing_specials(text: str, special_tokens: list[str]) -> str:
    """`text` without the special tokens (EOS, padding, end of turn) at its end."""
    stripped = True
    while stripped:
        stripped = False
        for token in special_tokens:
            if text.endswith(token):
                text, stripped = text[: -len(token)], True
    return text


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
    """Recover the messages of a text rendered with a chat template (a tokenizer's, or a known family's).

    The template is rendered on probe conversations; what it writes before the first message (`preamble`) and around
    each role's content (`prefixes`, `suffixes`) is read off between the probes. Parsing walks the text with those
    markers. The last message may lack its suffix (a generation that stopped at the end-of-turn token, or was cut);
    trailing special tokens (EOS, padding) are dropped from it. A missing preamble (a BOS the client stripped) is
    allowed.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, name: str = "tokenizer"):
        if tokenizer.chat_template is None:
            raise ValueError(
                f"The {name} tokenizer has no chat template, so its texts cannot be parsed into messages."
            )

        def render(messages: Messages, generation: bool) -> str:
            return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)

        self._learn(name, render, [token for token in tokenizer.all_special_tokens if token])

    @classmethod
    def from_template(cls, name: str, template: str, special_tokens: tuple[str, ...]) -> "ChatTemplateParser":
        """A parser of a known template family, rendered with Jinja as transformers renders chat templates."""
        compiled = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).from_string(template)
        parser = cls.__new__(cls)
        parser._learn(
            name,
            lambda messages, generation: compiled.render(messages=messages, add_generation_prompt=generation),
            list(special_tokens),
        )
        return parser

    def _learn(self, name: str, render: Callable[[Messages, bool], str], special_tokens: list[str]) -> None:
        self.name = name
        self.special_tokens = sorted(set(special_tokens), key=len, reverse=True)

        def chat(*turns: tuple[str, str]) -> Messages:
            return [{"role": role, "content": content} for role, content in turns]

        a, b, c = _PROBES
        try:
            before_a, between_ab, between_bc, _ = _split_probes(
                render(chat(("user", a), ("assistant", b), ("user", c)), False), _PROBES
            )
            _, after_a = _split_probes(render(chat(("user", a)), False), (a,))
        except Exception as error:
            raise ValueError(f"Cannot invert the {name} chat template: {error}.") from error
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
            before_s, between_sa, _ = _split_probes(render(chat(("system", c), ("user", a)), False), (c, a))
            if before_s.startswith(self.preamble) and between_sa.endswith(user_prefix):
                self.prefixes["system"] = before_s[len(self.preamble) :]
                self.suffixes["system"] = between_sa[: len(between_sa) - len(user_prefix)]
        except Exception:
            pass
        if not all(self.prefixes.values()) or not all(self.suffixes.values()):
            raise ValueError(
                f"Cannot invert the {name} chat template: it writes no marker around some role's content "
                f"(prefixes {self.prefixes}, suffixes {self.suffixes})."
            )
        probe = chat(("user", "Hello there, how are you?"), ("assistant", "Fine, thanks."))
        if self.parse(render(probe, False)) != probe:
            raise ValueError(f"Cannot invert the {name} chat template: a probe conversation does not parse back.")

    @property
    def markers(self) -> tuple:
        """What the parser recognises (two parsers with equal markers parse alike)."""
        return self.preamble, tuple(sorted(self.prefixes.items())), tuple(sorted(self.suffixes.items()))

    def _role_at(self, text: str, position: int) -> str | None:
        return next((r for r in ROLES if r in self.prefixes and text.startswith(self.prefixes[r], position)), None)

    def _leading_fragment(self, text: str) -> tuple[dict, int]:
        """The tail of a message a client cut from the left: (that message, where the next header starts)."""
        found = None
        for role in ("user", "system", "assistant"):  # a cut prompt most often starts inside a user turn
            if role not in self.suffixes:
                continue
            for following in self.prefixes.values():
                index = text.find(self.suffixes[role] + following)
                if index != -1 and (found is None or index < found[1]):
                    found = (role, index)
        if found is None:
            raise ValueError("the text starts inside a message and no following turn header was found")
        role, index = found
        return {"role": role, "content": text[:index]}, index + len(self.suffixes[role])

    def parse(self, text: str, cut: bool = False) -> Messages:
        """The messages of `text`; a ValueError that says where the text leaves the template.

        `cut`: the text may start inside a message (a client cut the prompt from the left); that message's tail
        becomes the first message, in the role whose end marker closes it."""
        position = len(self.preamble) if self.preamble and text.startswith(self.preamble) else 0
        messages = []
        if cut and position == 0 and self._role_at(text, 0) is None:
            first, position = self._leading_fragment(text)
            messages.append(first)
        while position < len(text):
            if not strip_trailing_specials(text[position:], self.special_tokens).strip():
                break  # only the template's tail, EOS or padding is left
            role = self._role_at(text, position)
            if role is None:
                raise ValueError(
                    f"The text does not follow the {self.name} chat template at character {position} "
                    f"({text[position : position + 40]!r}); expected one of the role headers "
                    f"{sorted(set(self.prefixes.values()))}."
                )
            position += len(self.prefixes[role])
            end = text.find(self.suffixes[role], position)
            if end == -1:  # the last turn, cut or ended by a bare end-of-turn token
                messages.append(
                    {"role": role, "content": strip_trailing_specials(text[position:], self.special_tokens)}
                )
                break
            messages.append({"role": role, "content": text[position:end]})
            position = end + len(self.suffixes[role])
        return messages


def _prompt_overlap(query: str, prompt: str) -> int:
    """Characters at the start of `query` that end `prompt` (the part of a prompt a client cut from the left kept)."""
    if query.startswith(prompt):
        return len(prompt)
    anchor = query[:16]
    start = prompt.find(anchor) if anchor else -1
    while start != -1:
        if query.startswith(prompt[start:]):
            return len(prompt) - start
        start = prompt.find(anchor, start + 1)
    return 0


class ItemEncoder:
    """Encode the items of every endpoint with the judge's tokenizer; cut or refuse those over `max_length`.

    Every `from_*` method returns the encoded item and whether it was scored as is (recovery on, no parser
    recognised the text).
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        max_length: int | None = None,
        refuse_overlong: bool = False,
        policy_tokenizer: PreTrainedTokenizerBase | None = None,
        recover: bool = True,
    ):
        if max_length is not None and max_length < 2:
            raise ValueError(f"`max_length` must be >= 2, got {max_length}.")
        if policy_tokenizer is not None and not recover:
            raise ValueError("`policy_tokenizer` serves to recover conversations; it needs `recover=True`.")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.refuse_overlong = refuse_overlong
        self.parsers: list[ChatTemplateParser] = []
        self._special_tokens = [token for token in tokenizer.all_special_tokens if token]
        if not recover:
            return
        if tokenizer.chat_template is None:
            logger.warning(
                "The judge's tokenizer has no chat template, so conversations cannot be re-rendered: every text is "
                "scored as sent."
            )
            return
        candidates = []
        try:
            candidates.append(ChatTemplateParser(tokenizer, "judge"))
        except ValueError as error:
            logger.warning("%s Texts in the judge's own template are recovered by the known families only.", error)
        if policy_tokenizer is not None:
            candidates.append(ChatTemplateParser(policy_tokenizer, "policy"))  # asked for: a failure is an error
        candidates += [ChatTemplateParser.from_template(name, *spec) for name, spec in KNOWN_TEMPLATES.items()]
        for parser in candidates:
            if all(parser.markers != kept.markers for kept in self.parsers):
                self.parsers.append(parser)
        self._special_tokens += [token for parser in self.parsers for token in parser.special_tokens]
        self._special_tokens = sorted(set(self._special_tokens), key=len, reverse=True)

    @property
    def recovers(self) -> bool:
        return bool(self.parsers)

    def conversation(self, text: str, cut: bool = False) -> Messages | None:
        """The conversation `text` holds, ending with an assistant turn to score; None when no parser recognises it.

        A text whose leading BOS a client stripped (verl strips the judge tokenizer's `bos_token`, which for some
        tokenizers is the first turn's `<|im_start|>`) is read with it put back."""
        bos = self.tokenizer.bos_token
        texts = [text, bos + text] if bos and not text.startswith(bos) else [text]
        for allow_cut in (False, True) if cut else (False,):
            for candidate in texts:
                for parser in self.parsers:
                    try:
                        messages = parser.parse(candidate, cut=allow_cut)
                    except ValueError:
                        continue
                    if messages and messages[-1]["role"] == "assistant" and messages[-1]["content"].strip():
                        return messages
        return None

    def _fit(self, input_ids: list[int], prompt_length: int | None) -> EncodedExample:
        if self.max_length is None or len(input_ids) <= self.max_length:
            return EncodedExample(list(input_ids), prompt_length)
        if self.refuse_overlong:
            raise ItemTooLong(
                f"item has {len(input_ids)} tokens, more than max_length={self.max_length}; shorten it (or start the "
                "server with `--overlong truncate` to cut the start of the prompt)"
            )
        cut = truncate_left(input_ids, prompt_length or 0, self.max_length, self.tokenizer.bos_token_id)
        return EncodedExample(cut.input_ids, cut.prompt_length if prompt_length is not None else None, truncated=True)

    def _from_messages(self, messages: Messages) -> EncodedExample | None:
        """The judge's rendering of a recovered conversation; None when its template cannot render it."""
        try:
            encoded = encode_prompt_response(self.tokenizer, messages[:-1] or None, messages[-1:])
        except Exception as error:  # e.g. a template that refuses a system turn
            logger.debug("The judge's template cannot render a recovered conversation: %s", error)
            return None
        return self._fit(encoded.input_ids, encoded.prompt_length)

    def from_pair(self, prompt: str | Messages | None, response: str | Messages) -> tuple[EncodedExample, bool]:
        """A (prompt, response) as `score_responses` encodes it: messages through the judge's template, a templated
        prompt text + response recovered as a conversation, other text as a plain pair."""
        if isinstance(response, str) and not response.strip():
            raise ValueError("empty response")
        if isinstance(prompt, list) and isinstance(response, str):
            response = strip_trailing_specials(
                response, self._special_tokens
            )  # slime keeps the EOS text; the template adds it
        recoverable = self.recovers and isinstance(prompt, (str, type(None))) and isinstance(response, str)
        if recoverable and (messages := self.conversation((prompt or "") + response)) is not None:
            if (encoded := self._from_messages(messages)) is not None:
                return encoded, False
        encoded = encode_prompt_response(self.tokenizer, *align_formats(prompt, response))
        return self._fit(encoded.input_ids, encoded.prompt_length), recoverable

    def from_query(self, query: str, prompt: str | None = None) -> tuple[EncodedExample, bool]:
        """An OpenRLHF query (prompt + response as the policy generated it) and, to help find the boundary, its
        prompt text (which a client may have cut from the left in the query)."""
        cut = bool(prompt) and not query.startswith(prompt)
        if self.recovers and (messages := self.conversation(query, cut)) is not None:
            if (encoded := self._from_messages(messages)) is not None:
                return encoded, False
        input_ids = self.tokenizer(query, add_special_tokens=False)["input_ids"]
        prompt_length = None
        kept = _prompt_overlap(query, prompt) if prompt else 0
        if kept:
            prompt_ids = self.tokenizer(query[:kept], add_special_tokens=False)["input_ids"]
            if input_ids[: len(prompt_ids)] == prompt_ids and len(prompt_ids) < len(input_ids):
                prompt_length = len(prompt_ids)
        if not input_ids or (prompt and query == prompt):
            raise ValueError("empty response: the query holds nothing after its prompt")
        return self._fit(input_ids, prompt_length), self.recovers

    def from_text(self, text: str) -> tuple[EncodedExample, bool]:
        """A vLLM `/classify` input: a rendered conversation (verl strips its leading BOS); scored as is, special
        tokens added as vLLM adds them, when no parser recognises it."""
        if self.recovers and (messages := self.conversation(text)) is not None:
            if (encoded := self._from_messages(messages)) is not None:
                return encoded, False
        input_ids = self.tokenizer(text)["input_ids"]
        if not input_ids:
            raise ValueError("empty input")
        return self._fit(input_ids, None), self.recovers
