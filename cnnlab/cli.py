"""The `cnnlab` command: parses arguments, then calls the library. Errors are one clear line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console

from cnnlab.errors import UserError


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model from a recipe (default: recipes/default.yaml)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")
    p.add_argument("--config", type=Path, help="recipe or run config YAML")
    p.add_argument("--out", type=Path, help="run folder (default runs/<recipe>-<timestamp>)")
    p.add_argument("--resume", type=Path, metavar="RUN", help="continue the run in this folder")


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="test loss, top-1 and top-5 error of a saved model")
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--data", help="dataset name (default: the one it was trained on)")
    p.add_argument("--data-root", help="folder holding the dataset files")
    p.add_argument("--split", default="test", choices=["test", "train"])


def _add_models(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list registered models with parameter counts")
    p.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. 'wrn*'")
    p.add_argument("--flops", action="store_true", help="also count forward FLOPs per image")
    p.add_argument("--input", default="3x32x32", help="CxHxW input for counting (default 3x32x32)")
    p.add_argument("--classes", type=int, default=10, help="number of classes (default 10)")


def _add_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="dataset utilities")
    data_sub = p.add_subparsers(dest="data_command", required=True)
    fetch = data_sub.add_parser("fetch", help="locate a dataset, downloading it if missing")
    fetch.add_argument("name", help="fashion_mnist, mnist, cifar10 or cifar100")
    fetch.add_argument("--root", help="folder to look in first and to download into")


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the `cnnlab` command."""
    parser = argparse.ArgumentParser(prog="cnnlab", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_eval(sub)
    _add_models(sub)
    _add_data(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args = build_parser().parse_args(argv)
    console = Console(highlight=False, soft_wrap=True)
    try:
        from cnnlab import commands

        return getattr(commands, args.command)(args, console)
    except UserError as exc:
        if args.debug:
            raise
        Console(stderr=True, highlight=False, soft_wrap=True).print(
            f"cnnlab: error: {exc}", markup=False
        )
        return 2
    except KeyboardInterrupt:
        Console(stderr=True).print("cnnlab: interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
