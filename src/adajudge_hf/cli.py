"""`adajudge` command line: one sub-command per task, each implemented by a module's `main(argv)`.

Every sub-command ends the same way (`handle_errors`, the one error handler of the CLI): a user error (bad path, bad
data, bad flag value: `ValueError`, `OSError`) in one line that says what is wrong and how to fix it, with exit code 2;
a refusal by the Hub in exit code 1; Ctrl-C in exit code 130; a closed pipe (`adajudge --help | head`) quietly.
`--debug` (anywhere on the line) or `ADAJUDGE_DEBUG=1` shows the traceback instead.
"""

import argparse
import functools
import importlib
import os
import sys
from collections.abc import Callable

from huggingface_hub.errors import HfHubHTTPError


COMMANDS = {
    "train": ("adajudge_hf.train", "fine-tune a judge with TRL's RewardTrainer (LoRA or frozen backbone)"),
    "evaluate": (
        "adajudge_hf.evaluation.cli",
        "score RM-Bench, JudgeBench, RewardBench (2) or preference pairs, official metrics",
    ),
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


def _quiet_broken_pipe() -> int:
    """The reader of stdout went away (`| head`): stop writing, without a traceback at exit either."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 141  # 128 + SIGPIPE, as for any command whose reader closed the pipe


def handle_errors(command: str) -> Callable[[Callable], Callable[[list[str] | None], int]]:
    """Decorate a sub-command's `main(argv)` with the CLI's error handling (see the module docstring)."""

    def decorate(main: Callable) -> Callable[[list[str] | None], int]:
        if getattr(main, "handles_errors_of", None) == command:
            return main

        @functools.wraps(main)
        def run(argv: list[str] | None = None) -> int:
            argv = sys.argv[1:] if argv is None else list(argv)
            debug = "--debug" in argv or os.environ.get("ADAJUDGE_DEBUG", "") not in ("", "0")
            argv = [arg for arg in argv if arg != "--debug"]
            try:
                return main(argv) or 0
            except BrokenPipeError:
                return _quiet_broken_pipe()
            except HfHubHTTPError as error:  # an OSError too: the Hub said no, the input may be fine
                if debug:
                    raise
                print(f"adajudge {command}: the Hub refused the request: {_one_line(error)}", file=sys.stderr)
                return 1
            except USER_ERRORS as error:
                if debug:
                    raise
                print(f"adajudge {command}: error: {_one_line(error)} (--debug shows the traceback)", file=sys.stderr)
                return 2
            except KeyboardInterrupt as interrupt:
                if debug:
                    raise
                print(f"adajudge {command}: {_one_line(interrupt) or 'interrupted'}", file=sys.stderr)
                return 130

        run.handles_errors_of = command
        return run

    return decorate


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or ("" if isinstance(error, KeyboardInterrupt) else type(error).__name__)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        command = next((arg for arg in argv if arg != "--debug"), None)
        if command not in COMMANDS:
            lines = [f"  {name:<9} {help_}" for name, (_, help_) in COMMANDS.items()]
            usage = "usage: adajudge {" + ",".join(COMMANDS) + "} [--help] [--debug] ...\n\ncommands:\n"
            print(usage + "\n".join(lines), flush=True)
            if command is not None and command not in ("-h", "--help"):
                print(f"\nadajudge: unknown command {command!r}", file=sys.stderr)
                return 2
            return 0
        rest = list(argv)
        rest.remove(command)
        module = importlib.import_module(COMMANDS[command][0])
        return handle_errors(command)(module.main)(rest)
    except BrokenPipeError:
        return _quiet_broken_pipe()


if __name__ == "__main__":
    sys.exit(main())
