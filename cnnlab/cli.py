"""The `cnnlab` command: parses arguments, then calls the library. Errors are one clear line."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console

from cnnlab.errors import ReportedElsewhere, UserError
from cnnlab.version import VERSION

# eval.tta's values (cnnlab.config.EvalConfig; a test keeps the two lists equal). The config
# module is not imported here so that `cnnlab --help` starts without pydantic.
TTA_MODES = ("none", "flip", "flip_shift")


EXAMPLES = "examples:\n"


class _HelpFormatter(argparse.HelpFormatter):
    # The description is wrapped to the terminal; the examples keep their lines.
    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text.startswith(EXAMPLES):
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


def _command(
    sub: argparse._SubParsersAction, name: str, summary: str, what: str, examples: str
) -> argparse.ArgumentParser:
    """Add sub-command `name`: `summary` in `cnnlab --help`, `what` it does and `examples` in
    `cnnlab NAME --help`."""
    return sub.add_parser(
        name, help=summary, description=what, epilog=EXAMPLES + examples,
        formatter_class=_HelpFormatter,
    )  # fmt: skip


def _add_imports(p: argparse.ArgumentParser) -> None:
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="import MODULE first, so that the models, datasets and methods it "
                   "registers can be named (repeatable)")  # fmt: skip


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = _command(
        sub, "train", "train a model from a recipe (default: recipes/default.yaml)",
        "Train a model from a recipe into a run folder (config.yaml, log.txt, metrics.jsonl, "
        "last.pt, summary.json, curves); key=value overrides change any config key, before or "
        "after the options. Shipped recipes are found by name from any folder (`cnnlab "
        "recipes` lists them). train.epochs_scale=F shortens or lengthens a recipe together "
        "with its schedule's epochs.",
        "  cnnlab train --out runs/first data.train_limit=512 train.epochs=1\n"
        "  cnnlab train --config recipes/cifar10/resnet20.yaml train.epochs_scale=0.01\n"
        "  cnnlab train --config recipes/cifar10/resnet20.yaml --print-config",
    )  # fmt: skip
    _add_imports(p)
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")
    p.add_argument("--config", type=Path, help="recipe or run config YAML")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved config (YAML) and exit, training nothing")  # fmt: skip
    p.add_argument("--out", type=Path, help="run folder (default runs/<recipe>-<timestamp>)")
    p.add_argument("--resume", type=Path, metavar="RUN", help="continue the run in this folder")
    p.add_argument("--extend-epochs", type=int, metavar="N",
                   help="with --resume: make the run N epochs long (the LR schedule is "
                   "recomputed for the new length; see docs/reliability.md)")  # fmt: skip


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = _command(
        sub, "eval", "test loss, top-1 and top-5 error of a saved model",
        "Evaluate a saved model on a dataset split (the test split of the data it was trained "
        "on by default). RUN_OR_CHECKPOINT is a .pt file or a run folder (its last.pt: the model "
        "the run's summary reports).",
        "  cnnlab eval runs/first\n"
        "  cnnlab eval runs/first/best.pt --split val --limit 1000 --batch-size 250",
    )  # fmt: skip
    _add_imports(p)
    p.add_argument("checkpoint", type=Path, metavar="RUN_OR_CHECKPOINT")
    p.add_argument("--data", help="dataset name or 'folder' (default: the one it was trained on)")
    p.add_argument("--data-root", help="folder holding the dataset files (or the image folder)")
    p.add_argument(
        "--split",
        default="test",
        choices=["test", "train", "val"],
        help="'val': the run's held-out validation split (data.val_size)",
    )
    p.add_argument(
        "--tta",
        choices=TTA_MODES,
        help="test-time augmentation (default: the run's eval.tta)",
    )
    p.add_argument("--limit", type=int, metavar="N", help="evaluate the split's first N images")
    p.add_argument("--batch-size", type=int, metavar="B",
                   help="images per batch (default: the run's train.eval_batch_size)")  # fmt: skip


def _add_models(sub: argparse._SubParsersAction) -> None:
    p = _command(
        sub, "models", "list registered models with parameter counts",
        "List the registered models with their parameter count, the image size they are "
        "built for (32: CIFAR-sized, 224: ImageNet-sized) and, with --flops, forward FLOPs "
        "per image. Models are counted without allocating their weights.",
        "  cnnlab models 'wrn*'\n  cnnlab models resnet50 --flops --classes 1000",
    )  # fmt: skip
    _add_imports(p)
    p.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. 'wrn*'")
    p.add_argument("--flops", action="store_true", help="also count forward FLOPs per image")
    p.add_argument("--input", help="CxHxW input for counting FLOPs (default: 3 channels at the "
                   "size each model is built for)")  # fmt: skip
    p.add_argument("--classes", type=int, metavar="N",
                   help="classes (default: 1000 for ImageNet-sized nets, else 10)")  # fmt: skip


def _add_data(sub: argparse._SubParsersAction) -> None:
    p = _command(
        sub, "data", "dataset utilities",
        "Locate or download a built-in dataset (fetch), or sort ImageNet's validation images "
        "into class folders (prepare-imagenet-val).",
        "  cnnlab data fetch cifar10\n"
        "  cnnlab data prepare-imagenet-val val_flat/ LOC_val_solution.csv --out imagenet/val",
    )  # fmt: skip
    data_sub = p.add_subparsers(dest="data_command", required=True)
    fetch = data_sub.add_parser("fetch", help="locate a dataset, downloading it if missing")
    fetch.add_argument("name", help="fashion_mnist, mnist, cifar10 or cifar100")
    fetch.add_argument("--root", help="folder to look in first and to download into")
    prep = data_sub.add_parser(
        "prepare-imagenet-val",
        help="sort ImageNet's flat validation images into class folders",
        description="Arrange ILSVRC2012_val_*.JPEG from a flat folder into OUT/<wnid>/. The "
        "ground truth has one line per image in file-number order: a wnid (n01440764), or a "
        "class id (the devkit's ILSVRC2012_validation_ground_truth.txt) with --synsets naming "
        "the wnid of each id; Kaggle's LOC_val_solution.csv is also read.",
    )
    prep.add_argument("images", type=Path, help="flat folder of ILSVRC2012_val_*.JPEG")
    prep.add_argument("ground_truth", type=Path, help="labels file (see above)")
    prep.add_argument("--out", type=Path, required=True, help="output folder, e.g. imagenet/val")
    prep.add_argument("--synsets", type=Path, help="wnid per line, line k = class id k")
    prep.add_argument("--index-base", type=int, default=1, choices=[0, 1],
                      help="first class id in the ground truth (devkit: 1)")  # fmt: skip
    prep.add_argument("--mode", default="link", choices=["link", "copy", "move", "symlink"],
                      help="hard link (copy where impossible), copy, move or symlink")  # fmt: skip


def _add_sweep(sub: argparse._SubParsersAction) -> None:
    p = _command(
        sub, "sweep", "run seeds x grid of a recipe, one resumable run folder each",
        "Train every (grid point x seed) of a recipe, each in its own resumable run folder under "
        "the sweep folder; running the same command again continues it.",
        "  cnnlab sweep recipes/default.yaml --seeds 3 --grid optim.lr=0.05,0.1 train.epochs=2\n"
        "  cnnlab report sweeps/default",
    )  # fmt: skip
    _add_imports(p)
    p.add_argument("recipe", type=Path, help="recipe YAML (or a run's config.yaml)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="overrides for every run")
    seeds = p.add_mutually_exclusive_group()
    seeds.add_argument("--seeds", type=int, metavar="N", help="seeds 0..N-1 (default: seed 0)")
    seeds.add_argument("--seed-list", metavar="0,1,2", help="these seeds")
    p.add_argument("--grid", action="append", default=[], metavar="key=v1,v2",
                   help="a grid axis (repeat for a product)")  # fmt: skip
    p.add_argument("--workers", type=int, default=1, metavar="K", help="parallel runs (default 1)")
    p.add_argument("--shard", default="0/1", metavar="i/n", help="run only shard i of n (0-based)")
    p.add_argument("--out", type=Path, help="sweep folder (default sweeps/<recipe name>)")


def _add_report(sub: argparse._SubParsersAction) -> None:
    p = _command(
        sub, "report", "tables and curves over the run folders under DIRs",
        "Tabulate the run folders found under DIRs (mean and spread across seeds, with the "
        "protocol and the recipe's published figure), and draw their curves.",
        "  cnnlab report sweeps/default --plot curves.png\n"
        "  cnnlab report runs --by model.name,optim.lr --format csv > table.csv",
    )  # fmt: skip
    p.add_argument("dirs", nargs="+", type=Path, metavar="DIR")
    p.add_argument("--by", help="group by these comma-separated config keys only")
    p.add_argument("--format", choices=["md", "csv"], default="md", help="table format (md)")
    p.add_argument("--plot", type=Path, metavar="OUT.png", help="draw curves across seeds here")
    p.add_argument("--markdown", type=Path, metavar="RESULTS.md", help="write a results page")


def _add_schedule(sub: argparse._SubParsersAction) -> None:
    p = _command(
        sub, "schedule", "draw a recipe's learning-rate curve (no training)",
        "Draw the learning rate of every step of a recipe's run as a PNG, without training.",
        "  cnnlab schedule recipes/cifar10/resnet20.yaml --out lr.png",
    )  # fmt: skip
    _add_imports(p)
    p.add_argument("recipe", type=Path, help="recipe YAML (or a run's config.yaml)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")
    p.add_argument("--out", type=Path, default=Path("lr.png"), help="PNG to write (lr.png)")


def _add_probe(sub: argparse._SubParsersAction) -> None:
    p = _command(
        sub, "probe", "per-layer dead-unit table and layer x epoch heat maps",
        "Print the per-layer dead-unit fractions a run measured, and draw them as layer x "
        "epoch heat maps.",
        "  cnnlab probe runs/first",
    )  # fmt: skip
    p.add_argument("target", type=Path, metavar="RUN_OR_CHECKPOINT")
    p.add_argument("--out", type=Path, help="folder for probe_<name>.png (default: the run's)")


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = _command(
        sub, "predict", "classify image files or folders with a saved model",
        "Classify image files (or every image in folders) with a saved model, preprocessed as "
        "the run evaluated. RUN_OR_CHECKPOINT is a .pt file or a run folder (its last.pt).",
        "  cnnlab predict runs/first shoe.png photos/ --top-k 3",
    )  # fmt: skip
    p.add_argument("checkpoint", type=Path, metavar="RUN_OR_CHECKPOINT")
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="image files or folders")
    p.add_argument("--top-k", type=int, default=1, metavar="K", help="classes per image (1)")
    p.add_argument("--format", choices=["table", "csv", "json"], default="table")
    p.add_argument("--tta", choices=TTA_MODES, help="default: the run's eval.tta")


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = _command(
        sub, "export", "write a saved model as ONNX, TorchScript or safetensors",
        "Write a saved model in another format, check its outputs against PyTorch's, and write "
        "a model card beside it. RUN_OR_CHECKPOINT is a .pt file or a run folder (its last.pt).",
        "  cnnlab export runs/first --format onnx",
    )  # fmt: skip
    p.add_argument("checkpoint", type=Path, metavar="RUN_OR_CHECKPOINT")
    p.add_argument("--format", required=True, help="onnx, torchscript or safetensors")
    p.add_argument("--out", type=Path, help="file to write (default: beside the checkpoint)")


def _add_tune(sub: argparse._SubParsersAction) -> None:
    p = _command(
        sub, "tune", "Optuna search of hyper-parameters on the validation split",
        "Search hyper-parameters with Optuna, each trial an ordinary run folder judged on a "
        "validation split (the test split is never read); the same command continues a study, "
        "--show tabulates it.",
        "  cnnlab tune recipes/default.yaml --param optim.lr=log:0.01:0.5 --trials 20 "
        "train.epochs=3\n  cnnlab tune --show --study default",
    )  # fmt: skip
    p.add_argument("recipe", type=Path, nargs="?", help="recipe YAML (not needed with --show)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="overrides for every trial")
    p.add_argument("--param", action="append", default=[], metavar="key=log:a:b",
                   help="searched key: log:a:b, float:a:b, int:a:b or cat:x,y")  # fmt: skip
    p.add_argument("--trials", type=int, default=20, metavar="N", help="trials in the study (20)")
    p.add_argument("--val-size", type=int, default=5000, help="validation images (5000)")
    p.add_argument("--storage", help="Optuna RDB URL (default sqlite:///<out>/study.db)")
    p.add_argument("--study", help="study name (default: the recipe's name)")
    p.add_argument("--pruner", choices=["median", "none"], default="median")
    p.add_argument("--startup-trials", type=int, metavar="N",
                   help="random trials before TPE / pruning (Optuna: 10 / 5)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="the sampler's seed (0)")
    p.add_argument("--workers", type=int, default=1, metavar="K", help="parallel processes (1)")
    p.add_argument("--out", type=Path, help="study folder (default tunes/<study>)")
    p.add_argument("--show", action="store_true",
                   help="print trials, write best.yaml + history.png")  # fmt: skip


def _add_recipes(sub: argparse._SubParsersAction) -> None:
    p = _command(
        sub, "recipes", "list the shipped recipes with the published result each targets",
        "List the recipes that ship with cnnlab: dataset, model and epochs, and the published "
        "test error each reproduces, with its row and source. Train one from any folder with "
        "`cnnlab train --config RECIPE`.",
        "  cnnlab recipes\n  cnnlab recipes 'cifar10/resnet*'",
    )  # fmt: skip
    p.add_argument("pattern", nargs="?", default="*",
                   help="shell-style filter on the recipe's name, e.g. 'cifar10/*' or "
                   "'*wrn*'")  # fmt: skip


class UsageError(Exception):
    """Arguments the parser cannot read (reported as one line, like any other bad input)."""


class _Parser(argparse.ArgumentParser):
    _intermixing = False

    # argparse prints the usage and then the error on two lines and exits; the house rule is
    # one line and exit status 2, so the error is raised and reported by `main`.
    def error(self, message: str) -> None:  # type: ignore[override]
        """Raise the parse error instead of printing usage and exiting."""
        raise UsageError(f"{message} (see `{self.prog} --help`)")

    def parse_known_args(self, args=None, namespace=None):  # noqa: ANN001, ANN201 - argparse's
        """Parse a sub-command's arguments with overrides and options in any order
        (`cnnlab train --out runs/x data.train_limit=512`), as Hydra and LightningCLI read
        them; plain argparse stops taking positionals at the first option."""
        nested = any(a.nargs == argparse.PARSER for a in self._get_positional_actions())
        if nested or self._intermixing:  # intermixed parsing calls this method back
            return super().parse_known_args(args, namespace)
        self._intermixing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the `cnnlab` command."""
    parser = _Parser(
        prog="cnnlab", description="Train, compare and revive convolutional image classifiers."
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--version", action="version", version=f"cnnlab {VERSION}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_eval(sub)
    _add_models(sub)
    _add_data(sub)
    _add_sweep(sub)
    _add_report(sub)
    _add_schedule(sub)
    _add_probe(sub)
    _add_predict(sub)
    _add_export(sub)
    _add_tune(sub)
    _add_recipes(sub)
    return parser


def _report(message: str, where: str = "") -> None:
    # One line, even when the message quotes user text with line breaks or control
    # characters in it: those are shown escaped.
    text = "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in message)
    Console(stderr=True, highlight=False, soft_wrap=True).print(
        f"{where}cnnlab: error: {text}", markup=False
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    try:
        args = build_parser().parse_args(argv)
    except UsageError as exc:
        _report(str(exc))
        return 2
    console = Console(highlight=False, soft_wrap=True)
    try:
        from cnnlab import commands
        from cnnlab.registry import import_plugins

        import_plugins(getattr(args, "imports", []))
        return getattr(commands, args.command)(args, console)
    except UserError as exc:
        if args.debug:
            raise
        if isinstance(exc, ReportedElsewhere):
            return 2
        # Under torchrun every rank may fail; rank r > 0 says which it is.
        rank = os.environ.get("RANK", "0") if "WORLD_SIZE" in os.environ else "0"
        _report(str(exc), f"[rank {rank}] " if rank != "0" else "")
        return 2
    except KeyboardInterrupt:
        Console(stderr=True).print("cnnlab: interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
