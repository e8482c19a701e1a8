"""The ``must`` command line: a plain dict of subcommands, each an (add_arguments, handler) pair.

User errors (:class:`~must.errors.MustError`) print one message and exit with code 2, no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Callable

from must.errors import MustError


def _lazy(module: str, add: str, handler: str) -> tuple[Callable, Callable]:
    """Import a subcommand's module only when it is used, so ``must --help`` stays fast."""

    def add_arguments(parser: argparse.ArgumentParser) -> None:
        getattr(importlib.import_module(module), add)(parser)

    def run(args: argparse.Namespace) -> int:
        return getattr(importlib.import_module(module), handler)(args)

    return add_arguments, run


# ----------------------------------------------------------------------------------------- run / validate


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="recipe YAML file")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. seed=3")
    parser.add_argument("--resume", action="store_true", help="continue an unfinished stage from its last checkpoint")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--only", metavar="STAGE", help="run just this stage")
    group.add_argument("--from", dest="from_stage", metavar="STAGE", help="run this stage and every later one")
    parser.add_argument(
        "--restart", metavar="STAGE", help="discard this stage's outputs and every later stage's, then run them"
    )


def run(args: argparse.Namespace) -> int:
    """Run the recipe; the runner prints a status line (or bar) per stage and the closing summary."""
    from must.config import load_recipe
    from must.runner import RunOptions, run_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    opts = RunOptions(resume=args.resume, only=args.only, from_stage=args.from_stage, restart=args.restart)
    run_recipe(recipe, opts)
    return 0


def add_validate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="recipe YAML file")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. seed=3")


def validate(args: argparse.Namespace) -> int:
    from must.config import dump_yaml, load_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    print(dump_yaml(recipe), end="")
    print(f"# {args.recipe}: valid ({len(recipe.stages)} stages: {', '.join(s.name for s in recipe.stages)})")
    for line in code_notes(recipe):
        print(f"# note: {line}")
    return 0


def code_notes(recipe) -> list[str]:
    """What in a recipe imports or runs code beyond must's own: dotted stage kinds (validating the recipe has
    already imported their modules) and remote modelling code allowed by ``trust_remote_code``."""
    from must.config import STAGE_KINDS

    notes = [f"stages[{i}].kind '{s.kind}' imports and runs module '{s.kind.partition(':')[0]}' (checking this "
             "recipe already did): a dotted kind runs code, so run such recipes only from people you trust"
             for i, s in enumerate(recipe.stages) if s.kind not in STAGE_KINDS]
    notes += [f"model.{part}.trust_remote_code: true lets the {part} folder run the modelling code shipped in it"
              for part in ("encoder", "llm") if getattr(recipe.model, part).trust_remote_code]
    return notes


#: Subcommand name -> (add_arguments(parser), handler(args) -> exit code).
COMMANDS: dict[str, tuple[Callable, Callable]] = {
    "run": (add_run_arguments, run),
    "validate": (add_validate_arguments, validate),
    "synth": _lazy("must.data.cli", "add_arguments", "handler"),
    "score": _lazy("must.eval", "add_score_arguments", "score_handler"),
    "eval": _lazy("must.eval", "add_eval_arguments", "eval_handler"),
    # plan takes validate's arguments; its module imports torch, so only its handler is imported lazily
    "plan": (add_validate_arguments, _lazy("must.plan", "add_arguments", "handler")[1]),
    "export": _lazy("must.export", "add_arguments", "handler"),
}

_HELP = {
    "run": "run a recipe's stages in order",
    "validate": "check a recipe and print it resolved (or its errors)",
    "synth": "write synthetic tracks, labels and a MusTBench-format parquet",
    "score": "score a predictions file against a MusTBench parquet",
    "eval": "run a saved model on a MusTBench parquet and score it",
    "plan": "estimate parameters, audio tokens and memory per stage",
    "export": "write a saved model as a folder transformers/peft load, with a model card (and push it to the Hub)",
}


def _version() -> str:
    """The installed distribution's version (package metadata), else the source tree's ``__version__``."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("must")
    except PackageNotFoundError:
        from must import __version__

        return __version__


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.ArgumentDefaultsHelpFormatter  # every option's default shown in its help
    parser = argparse.ArgumentParser(prog="must", description="Teach audio-language models when things happen in music.",
                                     formatter_class=fmt)
    parser.add_argument("--version", action="version", version=f"must {_version()}", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (add_arguments, _) in COMMANDS.items():
        add_arguments(sub.add_parser(name, help=_HELP.get(name, ""), description=_HELP.get(name, ""),
                                     formatter_class=fmt))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return COMMANDS[args.command][1](args) or 0
    except MustError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as exc:  # a full disk or a read-only folder outside the paths that name it themselves
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
