"""Push AdaJudge checkpoints to the Hugging Face Hub with a model card people can trust, and render that card offline.

    adajudge push out/judge org/adajudge-qwen3-8b --eval-dir eval/ --license apache-2.0 --dataset nvidia/HelpSteer3
    adajudge push --render-card-only out/judge org/adajudge-qwen3-8b --eval-dir eval/ --output README.md
    adajudge push --render-card-only --family adajudge-qwen3-8b --output hub_cards/adajudge-qwen3-8b.md

`push_judge` checks everything locally first (the checkpoint form, safetensors only, the heads, the tokenizer, the
card's metadata, the token), so bad input never creates a repo. One commit then uploads the checkpoint folder (any
form written by `save_judge`), the generated card and the evaluation files through huggingface_hub's regular client.
For the full form, which carries the remote-code files, a second commit pins the card's `trust_remote_code` snippet
to the commit that added them.

Loading back by repo id: `AutoModelForSequenceClassification.from_pretrained("org/name")` (full form, after
`import adajudge_hf`) or `load_judge("org/name")` (every form); both work from the local cache with
`HF_HUB_OFFLINE=1`.

Modules: `folders` (checks of the checkpoint and evaluation folders), `cards` (model cards), `push` (the upload),
`cli` (`adajudge push`).
"""

from .cards import FAMILY, PAPER_RESULTS, PAPER_URL, check_card, render_card, render_family_card
from .cli import build_parser, main
from .folders import Evaluation, check_checkpoint, read_evaluation, read_evaluations
from .push import push_judge


__all__ = [
    "FAMILY",
    "PAPER_RESULTS",
    "PAPER_URL",
    "Evaluation",
    "build_parser",
    "check_card",
    "check_checkpoint",
    "main",
    "push_judge",
    "read_evaluation",
    "read_evaluations",
    "render_card",
    "render_family_card",
]
