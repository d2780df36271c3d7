"""What each `cnnlab` sub-command does, given its parsed arguments."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table

from cnnlab.errors import UserError


def train(args: argparse.Namespace, console: Console) -> int:
    """`cnnlab train`: a new run from a recipe, or `--resume RUN`."""
    from cnnlab.config import load_config
    from cnnlab.engine.progress import ConsoleReporter
    from cnnlab.engine.run_folder import RunFolder, default_run_dir
    from cnnlab.engine.trainer import train_new, train_resume

    if args.resume is not None:
        if args.config or args.overrides or args.out:
            raise UserError(
                "--resume RUN continues a run as configured; drop --config/--out/overrides"
            )
        run = RunFolder.open(args.resume)
        cfg = load_config(run.config)
        start = train_resume
    else:
        cfg = load_config(args.config, args.overrides)
        run = RunFolder.create(args.out or default_run_dir(cfg.name))
        start = train_new
    reporter = ConsoleReporter(console)
    console.print(f"run folder: {run.path}")
    try:
        summary = start(cfg, run, [reporter])
    except UserError as exc:
        run.log(f"error: {exc}")
        raise
    finally:
        reporter.close()
    err, top5 = summary["final"]["test_error"], summary["final"]["test_top5_error"]
    console.print(
        f"done in {summary['wall_seconds']:.0f}s: test error {err:.2f}% "
        f"(accuracy {100 - err:.2f}%), top-5 error {top5:.2f}% at the last epoch"
    )
    console.print(f"run folder: {run.path}")
    return 0


def eval(args: argparse.Namespace, console: Console) -> int:  # noqa: A001 - the sub-command's name
    """`cnnlab eval CHECKPOINT`: evaluate a saved model on a dataset's test split."""
    from cnnlab.engine.evaluate_checkpoint import evaluate_checkpoint

    metrics = evaluate_checkpoint(args.checkpoint, args.data, args.data_root, args.split)
    console.print(
        f"{metrics['dataset']} {args.split} ({metrics['images']} images): "
        f"loss {metrics['loss']:.4f}  top-1 error {metrics['error']:.2f}%  "
        f"top-5 error {metrics['top5_error']:.2f}%"
    )
    return 0


def _parse_input(text: str) -> tuple[int, int, int]:
    try:
        c, h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise UserError(f"--input must look like 3x32x32, got '{text}'") from None
    return c, h, w


def models(args: argparse.Namespace, console: Console) -> int:
    """`cnnlab models [PATTERN]`: a table of models with params (and FLOPs)."""
    from cnnlab.analysis.profile import count_flops, count_params
    from cnnlab.registry import build_model, list_models, model_entry

    shape = _parse_input(args.input)
    names = list_models(args.pattern)
    if not names:
        raise UserError(f"no model matches '{args.pattern}'")
    table = Table("model", "params", *(["GFLOPs"] if args.flops else []), "description")
    for name in names:
        model = build_model(name, in_channels=shape[0], num_classes=args.classes)
        row = [name, f"{count_params(model) / 1e6:.2f}M"]
        if args.flops:
            row.append(f"{count_flops(model, shape) / 1e9:.3f}")
        table.add_row(*row, model_entry(name).doc)
    console.print(table)
    console.print(f"input {args.input}, {args.classes} classes; FLOPs count one forward pass")
    return 0


def data(args: argparse.Namespace, console: Console) -> int:
    """`cnnlab data fetch NAME`: report where a dataset is, downloading it when missing."""
    from cnnlab.data.download import fetch, locate
    from cnnlab.data.sources import load_split

    folder = locate(args.name, args.root)
    if folder is None:
        folder = fetch(args.name, args.root)
        console.print(f"{args.name}: downloaded and verified into {folder}")
    for split in ("train", "test"):
        ds = load_split(args.name, split, args.root, download=False)
        console.print(f"{args.name} {split}: {len(ds.labels)} images {tuple(ds.images.shape[1:])}")
    console.print(f"{args.name}: files in {folder}")
    return 0
