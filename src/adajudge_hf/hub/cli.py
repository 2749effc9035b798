"""`adajudge push`: push a checkpoint folder with its model card, or only render the card.

    adajudge push out/judge org/adajudge-qwen3-8b --eval-dir eval/ --license apache-2.0 --dataset nvidia/HelpSteer3
    adajudge push --render-card-only out/judge org/adajudge-qwen3-8b --eval-dir eval/ --output README.md
    adajudge push --render-card-only --family adajudge-qwen3-8b --output hub_cards/adajudge-qwen3-8b.md

User errors (a bad folder, a missing token) end in one line and exit code 2; a refusal by the Hub in exit code 1.
"""

import argparse
import sys

from ..cli import accept_underscore_flags, handle_errors
from .cards import FAMILY, render_card, render_family_card
from .push import push_judge


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="adajudge push",
        description="Push a judge checkpoint folder (any save_judge form) with a generated model card to the Hub, "
        "or only render the card.",
    )
    parser.add_argument("checkpoint_dir", nargs="?", help="folder written by save_judge")
    parser.add_argument("repo_id", nargs="?", help="target repo, e.g. org/adajudge-qwen3-8b")
    parser.add_argument(
        "--eval-dir",
        action="append",
        help="output folder of `adajudge evaluate`, or a folder of them; repeat for several benchmarks",
    )
    parser.add_argument(
        "--base-model",
        help="Hub id of the backbone (default: the one recorded in the checkpoint); needed for an adapter or heads "
        "judge trained on a local copy of its backbone: the pushed config.json then names this id",
    )
    parser.add_argument("--dataset", action="append", dest="datasets", help="Hub id of a training dataset; repeatable")
    parser.add_argument("--license", help="license id for the card, e.g. apache-2.0 (usually the backbone's)")
    parser.add_argument(
        "--force",
        action="store_true",
        help="publish --eval-dir results even if metrics.json records other weights than the checkpoint's",
    )
    push = parser.add_argument_group("push")
    push.add_argument("--private", action="store_true", help="create the repo as private")
    push.add_argument("--revision", help="branch to push to, created from main when new")
    push.add_argument("--commit-message")
    push.add_argument("--token", help="Hub token (default: HF_TOKEN or the cached login)")
    render = parser.add_argument_group("render only")
    render.add_argument("--render-card-only", action="store_true", help="write the card to --output; send nothing")
    render.add_argument("--family", choices=sorted(FAMILY), help="render the card of one of the paper's judges")
    render.add_argument("--output", help="where to write the rendered card (with --render-card-only)")
    return accept_underscore_flags(parser)


@handle_errors("push")
def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.render_card_only:
        if not args.output or (args.family is None) == (args.checkpoint_dir is None):
            parser.error("--render-card-only needs --output and either CHECKPOINT_DIR or --family")
    elif args.family or args.output or not (args.checkpoint_dir and args.repo_id):
        parser.error("pushing needs CHECKPOINT_DIR and REPO_ID (--family and --output go with --render-card-only)")
    if args.render_card_only:
        if args.family:
            card = render_family_card(args.family, repo_id=args.repo_id)
        else:
            card = render_card(
                args.checkpoint_dir,
                args.eval_dir,
                repo_id=args.repo_id,
                base_model=args.base_model,
                datasets=args.datasets,
                license=args.license,
                force=args.force,
            )
        card.save(args.output)
        print(f"Model card written to {args.output}")
        return 0
    info = push_judge(
        args.checkpoint_dir,
        args.repo_id,
        token=args.token,
        private=args.private,
        revision=args.revision,
        commit_message=args.commit_message,
        eval_dir=args.eval_dir,
        base_model=args.base_model,
        datasets=args.datasets,
        license=args.license,
        force=args.force,
    )
    print(f"Pushed to {info.repo_url} (commit {info.oid})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
