"""`adajudge` command line: one sub-command per task, each implemented by a module's `main(argv)`.

A user error (bad path, bad data, bad flag value: `ValueError`, `OSError`) ends in one line that says what is wrong
and how to fix it, with exit code 2; `--debug` (anywhere on the line) or `ADAJUDGE_DEBUG=1` shows the traceback.
"""

import argparse
import importlib
import os
import sys


COMMANDS = {
    "train": ("adajudge_hf.train", "fine-tune a judge with TRL's RewardTrainer (LoRA or frozen backbone)"),
    "evaluate": ("adajudge_hf.evaluation.cli", "score RM-Bench, JudgeBench or preference pairs with official metrics"),
    "push": ("adajudge_hf.hub.cli", "push a checkpoint folder with its model card to the Hugging Face Hub"),
    "demo": ("adajudge_hf.demo", "train, compare and package a real judge on the embedded default"),
    "serve": ("adajudge_hf.serve.cli", "serve a judge over HTTP to RL trainers (OpenRLHF, slime, verl, TRL)"),
}
USER_ERRORS = (ValueError, OSError)


def accept_underscore_flags(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Let every `--dashed-flag` of `parser` also be spelled `--dashed_flag`, as `adajudge train` (TRL's
    `HfArgumentParser`) spells its flags, so one habit works for every sub-command. Call once all flags are added."""
    for action in parser._actions:
        for flag in list(action.option_strings):
            alias = "--" + flag[2:].replace("-", "_")
            if flag.startswith("--") and alias not in parser._option_string_actions:
                action.option_strings.append(alias)
                parser._option_string_actions[alias] = action
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv or os.environ.get("ADAJUDGE_DEBUG", "") not in ("", "0")
    argv = [arg for arg in argv if arg != "--debug"]
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        lines = [f"  {name:<9} {help_}" for name, (_, help_) in COMMANDS.items()]
        print("usage: adajudge {" + ",".join(COMMANDS) + "} [--help] [--debug] ...\n\ncommands:\n" + "\n".join(lines))
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nadajudge: unknown command {argv[0]!r}", file=sys.stderr)
            return 2
        return 0
    command = argv[0]
    module = importlib.import_module(COMMANDS[command][0])
    try:
        return module.main(argv[1:]) or 0
    except USER_ERRORS as error:
        if debug:
            raise
        message = " ".join(str(error).split()) or type(error).__name__
        print(f"adajudge {command}: error: {message}\n(run with --debug for the traceback)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"adajudge {command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
