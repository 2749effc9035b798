"""`adajudge` command line: one sub-command per task, each implemented by a module's `main(argv)`."""

import importlib
import sys


COMMANDS = {
    "train": ("adajudge_hf.train", "fine-tune a judge with TRL's RewardTrainer (LoRA or frozen backbone)"),
    "evaluate": ("adajudge_hf.evaluation.cli", "score RM-Bench, JudgeBench or preference pairs with official metrics"),
    "push": ("adajudge_hf.hub", "push a checkpoint folder with its model card to the Hugging Face Hub"),
    "demo": ("adajudge_hf.demo", "train, compare and package a real judge on the embedded default"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        lines = [f"  {name:<9} {help_}" for name, (_, help_) in COMMANDS.items()]
        print("usage: adajudge {" + ",".join(COMMANDS) + "} [--help] ...\n\ncommands:\n" + "\n".join(lines))
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nadajudge: unknown command {argv[0]!r}", file=sys.stderr)
            return 2
        return 0
    module = importlib.import_module(COMMANDS[argv[0]][0])
    return module.main(argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main())
