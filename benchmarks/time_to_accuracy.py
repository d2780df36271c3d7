"""Time to accuracy: wall time from process start to the final Fashion-MNIST test accuracy.

Each seed is one fresh `cnnlab train` process on the speedrun recipe, timed from before the
process starts until it exits (interpreter start, imports, data, training, the single test
evaluation at the end). The recipe evaluates the test set once, after the last epoch, and
nothing is chosen on it. Prints one row per seed, then the median wall time and accuracy.

    python benchmarks/time_to_accuracy.py [--seeds 3] [--target 94.0] [key=value ...]

`--ablation` instead trains each variant of the recipe listed in ABLATIONS (one seed each,
unless --seeds) on 55,000 images and reports the accuracy on a 5,000-image validation split
held out of the training set, so the recipe's choices are judged without the test set.
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

from cnnlab.inference.evaluate_checkpoint import evaluate_checkpoint

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "fashion_mnist" / "speedrun.yaml"
VALIDATION = ["data.val_size=5000"]
# What each choice of the recipe buys: the recipe itself, then one change at a time.
# (Test-time augmentation needs no run of its own: the recipe's run is re-evaluated without it.)
ABLATIONS: dict[str, list[str]] = {
    "speedrun recipe": [],
    "no label smoothing": ["train.label_smoothing=0"],
    "batch 256, lr 0.4": ["train.batch_size=256", "optim.lr=0.4"],
    "cosine instead of one-cycle": ["schedule.name=cosine"],
}


def timed_run(overrides: list[str], out: Path) -> dict[str, float]:
    """Run one training process; return its wall seconds and final accuracies (percent)."""
    command = [sys.executable, "-m", "cnnlab", "train", "--config", str(RECIPE), "--out", str(out)]
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


def time_to_accuracy(seeds: int, target: float, overrides: list[str], tmp: Path) -> None:
    """Print per-seed wall time and test accuracy of the recipe, and their medians."""
    print(f"recipe {RECIPE.name} {' '.join(overrides)}; target {target:.2f} % test accuracy")
    print("| seed | wall s (process start to exit) | test accuracy % |\n|---|---|---|")
    walls, accs = [], []
    for seed in range(seeds):
        r = timed_run([*overrides, f"train.seed={seed}"], tmp / f"seed{seed}")
        walls.append(r["wall_s"])
        accs.append(r["test_acc"])
        print(f"| {seed} | {r['wall_s']:.0f} | {r['test_acc']:.2f} |", flush=True)
    wall, acc = statistics.median(walls), statistics.median(accs)
    verdict = "reached" if acc >= target else "NOT reached"
    print(f"\nmedian over {seeds} seeds: {wall:.0f} s, {acc:.2f} % ({verdict} {target:.2f} %)")


def ablation(seeds: int, overrides: list[str], tmp: Path, chosen: list[int] | None) -> None:
    """Print validation accuracy and wall time of the variants in ABLATIONS (`chosen`: all)."""
    print(f"ablation of {RECIPE.name} on a 5,000-image validation split; {seeds} seed(s) each")
    print("| variant | val accuracy % (median) | wall s (median) |\n|---|---|---|")
    for i, (label, change) in enumerate(ABLATIONS.items()):
        if chosen is not None and i not in chosen:
            continue
        outs = [tmp / f"v{i}s{s}" for s in range(seeds)]
        runs = [
            timed_run([*VALIDATION, *overrides, *change, f"train.seed={s}"], out)
            for s, out in enumerate(outs)
        ]
        acc = statistics.median(r["val_acc"] for r in runs)
        wall = statistics.median(r["wall_s"] for r in runs)
        print(f"| {label} | {acc:.2f} | {wall:.0f} |", flush=True)
        if i == 0:
            plain = [evaluate_checkpoint(o / "last.pt", None, None, "val", "none") for o in outs]
            acc = statistics.median(100.0 - m["error"] for m in plain)
            print(f"| no flip test-time augmentation (same runs) | {acc:.2f} | {wall:.0f} |")


def main() -> None:
    """Parse the arguments and run the timing or the ablation."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=None, help="default: 3 (ablation: 1)")
    parser.add_argument("--target", type=float, default=94.0, help="test accuracy, percent")
    parser.add_argument("--ablation", action="store_true", help="judge the recipe's choices")
    parser.add_argument("--variants", help="ablation: comma-separated indices into ABLATIONS")
    parser.add_argument("overrides", nargs="*", help="key=value changes to the recipe")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.ablation:
            chosen = [int(i) for i in args.variants.split(",")] if args.variants else None
            ablation(args.seeds or 1, args.overrides, Path(tmp), chosen)
        else:
            time_to_accuracy(args.seeds or 3, args.target, args.overrides, Path(tmp))


if __name__ == "__main__":
    main()
