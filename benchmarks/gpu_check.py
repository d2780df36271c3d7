"""The prepared GPU check (benchmarks/gpu_check.sh runs it): one run, no downloads, JSON out.

Sections, each recorded even when another fails (a lent GPU's time is short):
  floor_vs_loop  resnet20 (speednet with --tiny) on CIFAR-10-shaped data: the bare step and
                 the same step as one CUDA graph (CUDA only) vs cnnlab's steps and whole
                 epoch (benchmarks/throughput.py), per precision at batch 128 and 512;
  syncs          host syncs per training step, per precision (CUDA only; bn.momentum dynamic
                 and Random Erasing with the mean fill switched on, the two former offenders);
  auto           what train.precision/channels_last=auto choose at each batch, and the timings;
  compile        the floor with and without torch.compile (fp32 and the half precision),
                 with the wall time each took, compilation included;
  speedrun       recipes/cifar10/speedrun_gpu.yaml (airbench94's net) on CIFAR-10 (real when
                 found offline, else a learnable synthetic set in the exact pickle format;
                 `data_source` says which): wall time, step time and test accuracy of runs
                 with seeds 0, 1, 2 (one with --tiny) and their means, the test set touched
                 once per run, at its end.

    benchmarks/gpu_check.sh [--cpu] [--out gpu_check.json] [--tiny]

--cpu runs everything on the CPU (syncs are then not counted); --tiny shrinks every phase to
seconds, for the test suite.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from throughput import Case, floor, measure, write_cifar10

from cnnlab.config import load_config
from cnnlab.data.download import locate
from cnnlab.engine import numerics as numerics_module
from cnnlab.engine.numerics import Numerics, choose_numerics
from cnnlab.engine.run_folder import RunFolder
from cnnlab.engine.sync_count import SyncCounter
from cnnlab.registry import build_model
from cnnlab.run.training import build_trainer

SPEEDRUN = Path(__file__).resolve().parent.parent / "recipes" / "cifar10" / "speedrun_gpu.yaml"


CPU_FP16_NOTE = (
    "fp16 not timed on the CPU: with torch 2.13 its backward convolutions take a slow path "
    "(preact_resnet20, batch 128: 1.9 images/s against 147 in fp32)"
)


def precisions(device: torch.device) -> list[str]:
    """Return the precisions checked: fp32, bf16 (where the GPU has it), fp16 (GPU only)."""
    if device.type == "cpu":
        return ["fp32", "bf16"]
    return ["fp32"] + ["bf16"] * torch.cuda.is_bf16_supported() + ["fp16"]


def floor_vs_loop(p: argparse.Namespace, device: torch.device, root: str) -> list[dict]:
    """Images/s of the floor, cnnlab's steps and its whole epoch per batch and precision."""
    rows = []
    for batch in p.batches:
        for precision in precisions(device):
            r = measure(Case(p.model, "cifar10", root, batch), Numerics(precision), p.seconds,
                        conventional_too=False)  # fmt: skip
            rows.append({"batch": batch, "precision": precision, "floor": r["a"],
                         "graph_floor": r["g"], "graph_note": r["g_note"],
                         "loop_steps": r["b"], "loop_epoch": r["e"], "eval": r["d"],
                         "steps_over_floor": r["b"] / r["a"]})  # fmt: skip
    return rows


def syncs(p: argparse.Namespace, device: torch.device, root: str) -> dict[str, Any]:
    """Host syncs per step of epoch 2 per precision (CUDA only)."""
    if device.type != "cuda":
        return {"note": "not counted on the CPU (no host-device synchronisation there)"}
    out = {}
    for precision in precisions(device):
        counter = SyncCounter(epoch=2)
        cfg = load_config(None, [
            f"model.name={p.model}", "data.name=cifar10", f"data.root={root}",
            "data.train_limit=4096", "data.test_limit=512", "train.epochs=2",
            f"train.batch_size={p.batches[0]}", f"train.precision={precision}",
            "bn.momentum=dynamic", "augment.erase_prob=0.5", "augment.erase_fill=mean",
        ])  # fmt: skip
        with tempfile.TemporaryDirectory() as tmp:
            build_trainer(
                cfg, RunFolder.create(Path(tmp) / "r"), callbacks=[counter], progress=False
            ).fit()
        steps = counter.per_step
        out[precision] = {"per_step": steps, "mean": sum(steps) / max(1, len(steps))}
    return out


def auto(p: argparse.Namespace, device: torch.device, root: str) -> list[dict]:
    """What 'auto' picks for resnet20 at each batch (measured fresh, not from the cache)."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        numerics_module.CACHE_FILE = Path(tmp) / "numerics.json"
        for batch in p.batches:
            torch.manual_seed(0)
            model = build_model(p.model, in_channels=3)
            chosen = choose_numerics(model, p.model, (3, 32, 32), batch, device, "auto", "auto")
            rows.append({"batch": batch, "choice": chosen.label, "measured": chosen.measured})
    return rows


def compiled(p: argparse.Namespace, device: torch.device, root: str) -> list[dict]:
    """The floor at the first batch, fp32 and the fastest half precision, compiled or not."""
    rows = []
    for precision in p.compile_precisions:
        for on in (False, True):
            start = time.perf_counter()
            rate = floor(Case(p.model, "cifar10", root, p.batches[0], on), Numerics(precision),
                         p.seconds)  # fmt: skip
            rows.append({"precision": precision, "compile": on, "floor": rate,
                         "wall_seconds_with_compile": time.perf_counter() - start})  # fmt: skip
    return rows


def speedrun(p: argparse.Namespace, device: torch.device, root: str) -> dict[str, Any]:
    """Runs of recipes/cifar10/speedrun_gpu.yaml with seeds 0 .. n-1: wall seconds and test
    accuracy of each, and their means (the recipe's protocol); the first run also pays for
    the numerics measurement and cuDNN's autotuning, so the mean time leaves it out."""
    overrides = [f"data.root={root}", f"train.device={device.type}", *p.speedrun_overrides]
    runs = []
    for seed in range(p.speedrun_seeds):
        cfg = load_config(SPEEDRUN, [*overrides, f"train.seed={seed}"])
        with tempfile.TemporaryDirectory() as tmp:
            trainer = build_trainer(cfg, RunFolder.create(Path(tmp) / "r"), progress=False)
            summary = trainer.fit()
        # train_seconds: the epochs' steps only (CUDA events), as airbench times itself.
        runs.append({"seed": seed, "wall_seconds": summary["wall_seconds"],
                     "train_seconds": sum(r["seconds"] for r in trainer.history),
                     "test_accuracy": 100.0 - summary["final"]["test_error"]})  # fmt: skip
    accuracies = [r["test_accuracy"] for r in runs]
    warm = [r["wall_seconds"] for r in runs[1:]] or [runs[0]["wall_seconds"]]
    return {"recipe": "recipes/cifar10/speedrun_gpu.yaml", "overrides": overrides,
            "epochs": summary["epochs"], "runs": runs,
            "test_accuracy": sum(accuracies) / len(accuracies),
            "wall_seconds": sum(warm) / len(warm),
            "numerics": summary["numerics"], "backends": summary["backends"]}  # fmt: skip


SECTIONS: dict[str, Callable[[argparse.Namespace, torch.device, str], Any]] = {
    "floor_vs_loop": floor_vs_loop, "syncs": syncs, "auto": auto, "compile": compiled,
    "speedrun": speedrun,
}  # fmt: skip


def cifar_root(given: str | None, tmp: Path) -> tuple[str, str]:
    """Return (folder, 'real' or 'synthetic'): real CIFAR-10 found offline, else a learnable
    synthetic set in the exact pickle format written to `tmp`."""
    found = locate("cifar10", given)
    if found is not None:
        return str(found), "real"
    write_cifar10(tmp, learnable=True)
    return str(tmp), "synthetic (learnable, CIFAR-10 pickle format; no real CIFAR-10 found)"


def main() -> None:
    """Run every section and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="run on the CPU")
    parser.add_argument("--out", default="gpu_check.json")
    parser.add_argument("--cifar-root", help="folder with real CIFAR-10 (looked up offline)")
    parser.add_argument("--tiny", action="store_true", help="seconds-long phases (tests)")
    parser.add_argument("--sections", default=",".join(SECTIONS))
    args = parser.parse_args()
    # --tiny: speednet (about half the layers of resnet20, so torch.compile takes half as long)
    # and one compiled precision, to fit the test suite.
    args.model = "speednet" if args.tiny else "resnet20"
    args.batches = [16] if args.tiny else [128, 512]
    args.seconds = 0.3 if args.tiny else 3.0
    args.speedrun_overrides = (
        ["train.epochs=1", "train.eval_every=1", "data.train_limit=512", "data.test_limit=256",
         "train.batch_size=64", "model.width=8", "schedule.peak_epoch=0.5"]
        if args.tiny else []
    )  # fmt: skip
    half = "bf16" if args.cpu or torch.cuda.is_bf16_supported() else "fp16"
    args.compile_precisions = ["fp32"] if args.tiny else ["fp32", half]
    args.speedrun_seeds = 1 if args.tiny else 3
    if not args.cpu and not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA GPU here; use --cpu to run the same checks on the CPU")
    device = torch.device("cpu" if args.cpu else "cuda")
    results: dict[str, Any] = {
        "device": "cpu" if args.cpu else torch.cuda.get_device_name(),
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "tiny": args.tiny,
    }  # fmt: skip
    if args.cpu:
        results["note"] = CPU_FP16_NOTE
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root, source = cifar_root(args.cifar_root, Path(tmp))
        results["data_source"] = source
        for name in args.sections.split(","):
            t0 = time.perf_counter()
            try:
                results[name] = SECTIONS[name](args, device, root)
            except Exception as exc:  # noqa: BLE001 - keep the other sections' results
                results[name] = {"error": f"{type(exc).__name__}: {exc}",
                                 "trace": traceback.format_exc()[-2000:]}  # fmt: skip
            results.setdefault("section_seconds", {})[name] = round(time.perf_counter() - t0, 1)
            Path(args.out).write_text(json.dumps(results, indent=1) + "\n")  # partial results too
            print(f"gpu_check: {name} done in {time.perf_counter() - t0:.0f} s", flush=True)
    results["total_seconds"] = round(time.perf_counter() - started, 1)
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    print(f"gpu_check: wrote {args.out} ({results['total_seconds']} s)")


if __name__ == "__main__":
    main()
