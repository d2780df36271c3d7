"""What each `cnnlab` sub-command does, given its parsed arguments."""

from __future__ import annotations

import argparse
import functools
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from cnnlab.errors import UserError


def train(args: argparse.Namespace, console: Console) -> int:
    """`cnnlab train`: a new run from a recipe, or `--resume RUN`; under torchrun, one rank of
    a DDP job (rank 0 creates and writes the run folder and prints)."""
    from cnnlab.engine import distributed

    try:
        return _train(args, console)
    except RuntimeError as exc:
        # A rank that hits bad data says so in one line and exits 2, and torchrun then stops the
        # others; one already waiting in a collective sees the connection close first. That is
        # the other rank's failure, not a bug here: one line, not a traceback that buries the
        # message. (Agreeing on errors with a collective at each step would cost a sync per step.)
        if not distributed.peer_failed(exc):
            raise
        info = distributed.current()
        raise UserError(
            f"stopped: another process of this {info.world}-process job failed first "
            "(its message is above; torchrun's report names its rank)"
        ) from None
    finally:
        distributed.shutdown()


def _train(args: argparse.Namespace, console: Console) -> int:
    from cnnlab.config import load_config
    from cnnlab.engine import distributed
    from cnnlab.engine.progress import ConsoleReporter
    from cnnlab.engine.run_folder import RunFolder, default_run_dir
    from cnnlab.registry import check_model_options
    from cnnlab.run.resume_check import resume_config
    from cnnlab.run.training import prepare_run, train_new, train_resume

    if args.print_config:
        return _print_config(args, console)
    if args.resume is not None:
        if args.config or args.overrides or args.out:
            raise UserError(
                "--resume RUN continues a run as configured; drop --config/--out/overrides"
            )
        info = distributed.init_from_env(
            load_config(RunFolder.open(args.resume).config).train.device
        )
        run = RunFolder.open(args.resume, writer=info.is_main)
        cfg = resume_config(run, args.extend_epochs)  # refuses an edited config.yaml
        start = train_resume
    else:
        if args.extend_epochs is not None:
            raise UserError("--extend-epochs N lengthens a run: use it with --resume RUN")
        cfg = load_config(args.config, args.overrides)
        check_model_options(cfg.model.name, cfg.model.options())  # before any data is read
        info = distributed.init_from_env(cfg.train.device)
        if args.out:
            distributed.on_main(lambda: RunFolder.check_new(args.out))  # before reading data
        # A dataset that cannot be read or a model option out of range stops here, before the
        # folder exists.
        prepared = prepare_run(cfg)
        # Rank 0 picks (the timestamped default) and creates the folder; the others follow it.
        path = distributed.on_main(
            lambda: RunFolder.create(args.out or default_run_dir(cfg.name)).path
        )
        run = RunFolder(path, writer=info.is_main)
        start = functools.partial(train_new, prepared=prepared)
    if not info.is_main:
        console = Console(quiet=True)
    reporter = ConsoleReporter(console)
    console.print(f"run folder: {run.path}")
    if info.active:
        console.print(f"distributed: {info.world} processes, global batch {cfg.train.batch_size}")
    try:
        summary = start(cfg, run, [reporter] if info.is_main else [])
    except UserError as exc:
        run.log(f"error: {exc}")
        raise
    finally:
        reporter.close()
    split = "test" if cfg.eval.test else "val"  # eval.test=false: the test split is unread
    err, top5 = summary["final"][f"{split}_error"], summary["final"][f"{split}_top5_error"]
    console.print(
        f"done in {summary['wall_seconds']:.0f}s: {split} error {err:.2f}% "
        f"(accuracy {100 - err:.2f}%), top-5 error {top5:.2f}% at the last epoch"
    )
    console.print(f"run folder: {run.path}")
    return 0


def _print_config(args: argparse.Namespace, console: Console) -> int:
    # The config exactly as a run would be given it (validated, defaults and overrides in,
    # train.epochs_scale applied), or the config a --resume would continue with; nothing is
    # trained or written.
    from cnnlab.config import dump_config, load_config
    from cnnlab.engine.run_folder import RunFolder

    if args.resume is not None:
        cfg = load_config(RunFolder.open(args.resume, writer=False).config)
    else:
        cfg = load_config(args.config, args.overrides)
    console.print(dump_config(cfg), markup=False, end="")
    return 0


def eval(args: argparse.Namespace, console: Console) -> int:  # noqa: A001 - the sub-command's name
    """`cnnlab eval CHECKPOINT`: evaluate a saved model on a dataset split (test by default)."""
    from cnnlab.inference.evaluate_checkpoint import evaluate_checkpoint

    metrics = evaluate_checkpoint(
        args.checkpoint, args.data, args.data_root, args.split, args.tta, args.limit,
        args.batch_size,
    )  # fmt: skip
    console.print(
        f"{metrics['dataset']} {args.split} ({metrics['images']} images, tta {metrics['tta']}): "
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


def with_unit(count: float) -> str:
    """Return a count with a metric unit: 62.0 M, 1.82 G, 512 k."""
    for unit, size in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        # 999.9 M rounds to 1000 M at three digits: that is 1.00 G.
        if count >= size * 0.9995:
            value = count / size
            return f"{value:#.3g} {unit}" if value < 99.95 else f"{value:.0f} {unit}"
    return f"{count:.0f}"


def models(args: argparse.Namespace, console: Console) -> int:
    """`cnnlab models [PATTERN]`: a table of models with params, input size (and FLOPs)."""
    from cnnlab.analysis.profile import count_flops, count_params, shape_only
    from cnnlab.registry import build_model, list_models, model_entry

    given = _parse_input(args.input) if args.input else None
    names = list_models(args.pattern)
    if not names:
        raise UserError(f"no model matches '{args.pattern}'")
    table = Table("model", "built for", "params", *(["FLOPs"] if args.flops else []),
                  "description")  # fmt: skip
    sizes = set()
    for name in names:
        side = model_entry(name).image_size
        shape = given or (3, side, side)
        classes = args.classes or (1000 if side == 224 else 10)
        sizes.add((side, classes))
        # Meta tensors: a 140 M-parameter VGG is counted without allocating or initialising it.
        model = shape_only(build_model, name, in_channels=shape[0], num_classes=classes)
        kind = "ImageNet" if side == 224 else "CIFAR"
        row = [name, f"{side}x{side} ({kind})", f"{count_params(model) / 1e6:.2f} M"]
        if args.flops:
            row.append(with_unit(count_flops(model, shape)))
        table.add_row(*row, model_entry(name).doc)
    console.print(table)
    counted = "; ".join(f"{side}x{side} nets: {classes} classes" for side, classes in sorted(sizes))
    inputs = f"input {args.input}" if args.input else "input 3 x the size each is built for"
    console.print(
        f"{counted} (--classes N to change); FLOPs: one forward pass, {inputs}, a "
        "multiply-add counted as 2"
    )
    return 0


def data(args: argparse.Namespace, console: Console) -> int:
    """`cnnlab data fetch NAME` / `prepare-imagenet-val`."""
    if args.data_command == "prepare-imagenet-val":
        return _prepare_imagenet_val(args, console)
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


def _prepare_imagenet_val(args: argparse.Namespace, console: Console) -> int:
    from cnnlab.data.prepare import prepare_imagenet_val

    counts = prepare_imagenet_val(
        args.images, args.ground_truth, args.out, args.synsets, args.index_base, args.mode
    )
    sizes = sorted(set(counts.values()))
    spread = f"{sizes[0]}" if len(sizes) == 1 else f"{sizes[0]}..{sizes[-1]}"
    console.print(
        f"{sum(counts.values())} images in {len(counts)} class folders under {args.out} "
        f"({spread} per class); train with data.name=folder data.root=<folder holding train/ "
        f"and {args.out.name}/>"
    )
    return 0


def schedule(args: argparse.Namespace, console: Console) -> int:
    """`cnnlab schedule RECIPE`: the run's per-step learning rate as a PNG, without training."""
    from cnnlab.analysis.lr_curve import plot_lr_curve
    from cnnlab.config import load_config
    from cnnlab.data.pipeline import steps_per_epoch, train_images
    from cnnlab.engine.optim import Schedule

    cfg = load_config(args.recipe, args.overrides)
    steps = steps_per_epoch(cfg)
    lrs = Schedule(cfg.schedule, cfg.train.epochs, steps, base_lr=cfg.optim.lr).curve()
    title = f"{cfg.name}: {cfg.schedule.name}, {cfg.train.epochs} epochs x {steps} steps"
    plot_lr_curve(lrs, steps, args.out, title)
    peak = max(range(len(lrs)), key=lrs.__getitem__)
    console.print(
        f"{train_images(cfg)} training images / batch {cfg.train.batch_size} = {steps} steps "
        f"per epoch, {len(lrs)} steps; lr {lrs[0]:.4g} at the first step, peak {lrs[peak]:.4g} "
        f"at step {peak}, {lrs[-1]:.4g} at the last"
    )
    console.print(f"learning-rate curve: {args.out}")
    return 0


def sweep(args: argparse.Namespace, console: Console) -> int:
    """`cnnlab sweep RECIPE`: each (grid point x seed) as its own resumable run folder."""
    from pathlib import Path

    from cnnlab.config import apply_overrides, find_recipe, read_yaml
    from cnnlab.experiments import plan as sweeps
    from cnnlab.experiments.sweep import run_sweep

    if any(o.partition("=")[0].strip() == "train.seed" for o in args.overrides):
        raise UserError("a sweep sets train.seed itself; use --seeds N or --seed-list 0,1,2")
    # A bad recipe or override fails here, once, rather than in every run.
    # A shipped recipe's name works from any folder, as with `train --config`.
    raw = apply_overrides(read_yaml(find_recipe(args.recipe)), args.overrides)
    spec = sweeps.SweepSpec(
        str(args.recipe), tuple(args.overrides), sweeps.parse_grid(args.grid),
        sweeps.parse_seeds(args.seeds, args.seed_list),
    )  # fmt: skip
    index, count = sweeps.parse_shard(args.shard)
    if args.workers < 1:
        raise UserError(f"--workers must be at least 1, got {args.workers}")
    out = args.out or Path("sweeps") / str(raw.get("name") or args.recipe.stem)
    runs = sweeps.plan(spec)
    mine = sweeps.shard(runs, index, count)
    sweeps.claim_folder(out, spec, f"{sweeps.sweep_command(spec)} --out {out}")
    console.print(
        f"sweep {out}: {len(runs)} run(s): {len(runs) // len(spec.seeds)} configuration(s) x "
        f"{len(spec.seeds)} seed(s); shard {index}/{count} has {len(mine)}"
    )
    try:
        outcomes = run_sweep(spec, mine, out, (index, count), args.workers, console)
    except KeyboardInterrupt:
        console.print(f"stopped; run the same command again to continue the sweep in {out}")
        raise
    failed = [o for o in outcomes if o.status == "failed"]
    counts = {s: sum(o.status == s for o in outcomes) for s in ("trained", "resumed", "skipped")}
    console.print(
        f"{counts['trained']} trained, {counts['resumed']} resumed, {counts['skipped']} already "
        f"done, {len(failed)} failed (see {out / 'sweep.log'}); table: cnnlab report {out}"
    )
    return 1 if failed else 0


def report(args: argparse.Namespace, console: Console) -> int:
    """`cnnlab report DIR...`: result tables (with their protocol) and curves across seeds."""
    import shlex
    import sys

    from cnnlab.experiments import report as reports

    by = [k.strip() for k in args.by.split(",") if k.strip()] if args.by else None
    result = reports.build_report(args.dirs, by)
    picture = args.plot
    if picture is None and args.markdown is not None:
        picture = args.markdown.with_suffix(".png")
    if picture is not None and picture.suffix.lower() not in (".png", ".svg", ".pdf"):
        raise UserError(f"--plot {picture}: use a .png, .svg or .pdf file name")
    # With --format csv, stdout carries the CSV alone (so it can be redirected); the rest goes
    # to stderr.
    info = console
    if args.format == "csv":
        sys.stdout.write(reports.csv_table(result.rows))
        info = Console(stderr=True, highlight=False, soft_wrap=True)
    elif result.rows:
        console.print(reports.protocol_text(result.rows), markup=False)
        console.print(reports.markdown_table(result.rows), markup=False)
    if result.left_out:
        info.print("\nRuns not in the table:", markup=False)
        info.print(reports.problems_table(result.left_out), markup=False)
    if not result.groups:
        picture = None
    if picture is not None:
        from cnnlab.experiments.figures import plot_groups

        plot_groups(reports.curves_of(result), picture, "test error and train loss per epoch")
        info.print(f"curves: {picture}", markup=False)
    if args.markdown is not None:
        options = [*(["--by", args.by] if args.by else []), "--markdown", str(args.markdown)]
        options += ["--plot", str(picture)] if args.plot else []
        command = shlex.join(["cnnlab", "report", *map(str, args.dirs), *options])
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(reports.results_page(result, command, args.markdown, picture))
        info.print(f"results page: {args.markdown}", markup=False)
    return 0


def _probe_history(target: Path) -> tuple[list[dict[str, Any]], Path]:
    # The metrics rows of a run folder or of a checkpoint, and the folder they belong to.
    from cnnlab.engine.checkpoint import load_checkpoint
    from cnnlab.engine.run_folder import read_metrics

    target = Path(target)
    if target.is_dir():
        if not (target / "metrics.jsonl").is_file():
            raise UserError(f"{target} is not a run folder (it has no metrics.jsonl)")
        return read_metrics(target / "metrics.jsonl"), target
    return list(load_checkpoint(target).get("history", [])), target.parent


def probe(args: argparse.Namespace, console: Console) -> int:
    """`cnnlab probe RUN_OR_CHECKPOINT`: dead-unit fractions per layer, and their heat maps."""
    from cnnlab.analysis.probe_maps import plot_probe_map, probe_maps

    history, folder = _probe_history(args.target)
    maps = probe_maps(history)
    if not maps:
        raise UserError(f"{args.target} has no probe readings (trained with probes.enabled=false?)")
    out = args.out or folder
    out.mkdir(parents=True, exist_ok=True)
    for pm in maps:
        first, last = pm.epochs[0], pm.epochs[-1]
        table = Table("layer", f"epoch {first}", f"epoch {last}", "max", title=pm.probe)
        for name, values in zip(pm.layers, pm.values):
            cells = [f"{v:.3f}" if v == v else "-" for v in (values[0], values[-1])]  # NaN: -
            table.add_row(name, *cells, f"{max(v for v in values if v == v):.3f}")
        console.print(table)
        png = plot_probe_map(pm, out / f"probe_{pm.probe}.png", folder.name)
        console.print(f"heat map: {png}")
    return 0


def predict(args: argparse.Namespace, console: Console) -> int:
    """`cnnlab predict CHECKPOINT PATH...`: top-k classes of image files, as the run sees them."""
    import sys

    from cnnlab.inference import predict as predicting
    from cnnlab.run.saved_model import load_trained_model

    trained = load_trained_model(args.checkpoint)
    files = predicting.image_files(args.paths)
    tta = args.tta or trained.cfg.eval.tta
    result = predicting.predict_files(trained, files, args.top_k, tta)
    if args.format == "csv":
        sys.stdout.write(predicting.csv_text(result))
    elif args.format == "json":
        sys.stdout.write(predicting.json_text(result, args.checkpoint, tta))
    else:
        k = max((len(p.top) for p in result.predictions), default=1)
        ranks = (
            [c for r in range(1, k + 1) for c in (f"class {r}", "p")] if k > 1 else ["class", "p"]
        )
        table = Table("image", *ranks)
        for pred in result.predictions:
            table.add_row(str(pred.path), *(c for _, n, p in pred.top for c in (n, f"{p:.3f}")))
        console.print(table)
        console.print(f"{len(result.predictions)} image(s), {trained.cfg.model.name}, tta {tta}")
    if result.unreadable:
        raise UserError(predicting.unreadable_message(result))
    return 0


def export(args: argparse.Namespace, console: Console) -> int:
    """`cnnlab export CHECKPOINT --format F`: the model in another format, checked, + a card."""
    from cnnlab.inference.export import export_checkpoint

    done = export_checkpoint(args.checkpoint, args.format, args.out)
    console.print(
        f"{done.format}: {done.path} ({done.check}); largest relative logit difference "
        f"{done.max_rel_diff:.3g} <= tolerance {done.tolerance:g}"
    )
    console.print(f"model card: {done.card_json}, {done.card_md}")
    return 0


def tune(args: argparse.Namespace, console: Console) -> int:
    """`cnnlab tune RECIPE --param ...`: an Optuna study on the validation split; `--show`."""
    from cnnlab.experiments import tune as tuning

    if args.show:
        return tuning.show(args, console)
    return tuning.run_study(args, console)


def recipes(args: argparse.Namespace, console: Console) -> int:
    """`cnnlab recipes [PATTERN]`: the shipped recipes and the published result each targets."""
    from cnnlab.experiments.recipe_index import shipped_recipes

    rows = shipped_recipes(args.pattern)
    if not rows:
        raise UserError(f"no shipped recipe matches '{args.pattern}' (try `cnnlab recipes`)")
    table = Table("recipe", "data", "model", "epochs", "published error", "row", "source")
    for r in rows:
        value = f"{r.value:.2f} %" if r.value is not None else "-"
        table.add_row(r.name, r.dataset, r.model, str(r.epochs), value, r.row, r.source)
    console.print(table)
    console.print(
        f"{len(rows)} recipe(s); train one from any folder: cnnlab train --config RECIPE "
        "(train.epochs_scale=0.01 for a short trial of the same schedule)"
    )
    return 0
