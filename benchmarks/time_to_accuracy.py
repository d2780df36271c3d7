"""Time to accuracy: wall time from process start to the final Fashion-MNIST test accuracy.

Each seed is one fresh `cnnlab train` process on the recipe (default: the speedrun recipe),
timed from before the process starts until it exits (interpreter start, imports, data,
training, the single test evaluation at the end). The recipe evaluates the test set once,
after the last epoch, and nothing is chosen on it. Prints one row per seed, then the median
wall time and accuracy.

    python benchmarks/time_to_accuracy.py [--recipe R] [--seeds 3] [--target 94.0] [key=value ...]

`--ablation` instead trains each variant of the recipe (those in ABLATIONS, or the ones given
with `--vary "label: key=value key=value"`, repeatable; one seed each, unless --seeds) on
55,000 images and reports the accuracy on a 5,000-image validation split held out of the
training set, so the recipe's choices are judged without the test set: the test split is not
even read (eval.test=false).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cnnlab.cli import TTA_MODES
from cnnlab.config import load_config
from cnnlab.inference.evaluate_checkpoint import evaluate_checkpoint

SPEEDRUN = Path(__file__).resolve().parents[1] / "recipes" / "fashion_mnist" / "speedrun.yaml"
VALIDATION = ["data.val_size=5000", "eval.test=false"]
# What each choice of the recipe buys: the recipe itself, then one change at a time.
# (Test-time augmentation needs no run of its own: the recipe's run is re-evaluated without it.)
ABLATIONS: dict[str, list[str]] = {
    "speedrun recipe": [],
    "no label smoothing": ["train.label_smoothing=0"],
    "batch 256, lr 0.4": ["train.batch_size=256", "optim.lr=0.4"],
    "cosine instead of one-cycle": ["schedule.name=cosine"],
}


def timed_run(recipe: Path, overrides: list[str], out: Path) -> dict[str, float]:
    """Run one training process; return its wall seconds and final accuracies (percent)."""
    command = [sys.executable, "-m", "cnnlab", "train", "--config", str(recipe), "--out", str(out)]
    start = time.perf_counter()
    done = subprocess.run([*command, *overrides], capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"training failed ({' '.join(overrides)}):\n{done.stderr.strip()}")
    final = json.loads((out / "summary.json").read_text())["final"]
    result = {"wall_s": wall}
    for split in ("val", "test"):
        if f"{split}_error" in final:
            result[f"{split}_acc"] = 100.0 - final[f"{split}_error"]
    return result


def time_to_accuracy(
    recipe: Path, seeds: int, target: float, overrides: list[str], tmp: Path
) -> None:
    """Print per-seed wall time and test accuracy of the recipe, and their medians."""
    print(f"recipe {recipe.name} {' '.join(overrides)}; target {target:.2f} % test accuracy")
    print("| seed | wall s (process start to exit) | test accuracy % |\n|---|---|---|")
    walls, accs = [], []
    for seed in range(seeds):
        r = timed_run(recipe, [*overrides, f"train.seed={seed}"], tmp / f"seed{seed}")
        walls.append(r["wall_s"])
        accs.append(r["test_acc"])
        print(f"| {seed} | {r['wall_s']:.0f} | {r['test_acc']:.2f} |", flush=True)
    wall, acc = statistics.median(walls), statistics.median(accs)
    verdict = "reached" if acc >= target else "NOT reached"
    print(f"\nmedian over {seeds} seeds: {wall:.0f} s, {acc:.2f} % ({verdict} {target:.2f} %)")


def parse_variant(text: str) -> tuple[str, list[str]]:
    """Return (label, overrides) of a `--vary "label: key=value ..."` argument."""
    label, sep, changes = text.partition(":")
    if not sep or not label.strip():
        sys.exit(f"--vary needs 'label: key=value ...', got {text!r}")
    return label.strip(), changes.split()


def ablation(
    recipe: Path, variants: dict[str, list[str]], seeds: int, overrides: list[str], tmp: Path
) -> None:
    """Print validation accuracy and wall time of each variant (the first is the baseline)."""
    print(f"ablation of {recipe.name} on a 5,000-image validation split; {seeds} seed(s) each")
    print("| variant | val accuracy % (median) | wall s (median) |\n|---|---|---|")
    for i, (label, change) in enumerate(variants.items()):
        outs = [tmp / f"v{i}s{s}" for s in range(seeds)]
        runs = [
            timed_run(recipe, [*VALIDATION, *overrides, *change, f"train.seed={s}"], out)
            for s, out in enumerate(outs)
        ]
        acc = statistics.median(r["val_acc"] for r in runs)
        wall = statistics.median(r["wall_s"] for r in runs)
        print(f"| {label} | {acc:.2f} | {wall:.0f} |", flush=True)
        if i == 0:  # the baseline's weights under every other test-time augmentation
            own = load_config(outs[0] / "config.yaml").eval.tta
            for tta in (mode for mode in TTA_MODES if mode != own):
                again = [evaluate_checkpoint(o / "last.pt", None, None, "val", tta) for o in outs]
                acc = statistics.median(100.0 - m["error"] for m in again)
                print(f"| test-time augmentation {tta} (same runs) | {acc:.2f} | {wall:.0f} |")


def main() -> None:
    """Parse the arguments and run the timing or the ablation."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, default=SPEEDRUN, help="default: the speedrun")
    parser.add_argument("--seeds", type=int, default=None, help="default: 3 (ablation: 1)")
    parser.add_argument("--target", type=float, default=94.0, help="test accuracy, percent")
    parser.add_argument("--ablation", action="store_true", help="judge the recipe's choices")
    parser.add_argument("--variants", help="ablation: comma-separated indices into ABLATIONS")
    parser.add_argument(
        "--vary", action="append", default=[], help="ablation variant 'label: key=value ...'"
    )
    parser.add_argument("overrides", nargs="*", help="key=value changes to the recipe")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.ablation:
            variants = dict(parse_variant(v) for v in args.vary) or dict(ABLATIONS)
            if args.variants:
                keep = {int(i) for i in args.variants.split(",")}
                variants = {k: v for i, (k, v) in enumerate(variants.items()) if i in keep}
            ablation(args.recipe, variants, args.seeds or 1, args.overrides, Path(tmp))
        else:
            time_to_accuracy(args.recipe, args.seeds or 3, args.target, args.overrides, Path(tmp))


if __name__ == "__main__":
    main()
