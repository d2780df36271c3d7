"""The prepared GPU check (benchmarks/gpu_check.sh and gpu_first_run.sh run it): no downloads,
JSON out.

Sections, each recorded even when another fails, and within a section each row keeps its own
error (a lent GPU's time is short); the JSON is rewritten as each section ends:
  env            python, torch, CUDA, cuDNN, the GPU, its driver and memory, the packages;
  fused_sgd      fused SGD under fp16's GradScaler when the first step overflows: the
                 momentum left by the skipped step, the weights after three more steps
                 against unfused SGD's, whether resnet20's own first fp16 step overflows,
                 and an fp16 step after loading an unfused optimizer's state;
  syncs          host syncs per training step, per precision (CUDA only; bn.momentum dynamic
                 and Random Erasing with the mean fill switched on, the two former offenders);
  speedrun       recipes/cifar10/speedrun_gpu.yaml (airbench94's net) on CIFAR-10 (real when
                 found offline, else a learnable synthetic set in the exact pickle format;
                 `data_source` says which): wall time, step time and test accuracy of runs
                 with seeds 0, 1, 2 (one with --tiny) and their means, the test set touched
                 once per run, at its end;
  floor_vs_loop  resnet20 (speednet with --tiny) on CIFAR-10-shaped data: the bare step and
                 the same step as one CUDA graph (CUDA only) vs cnnlab's steps and whole
                 epoch (benchmarks/throughput.py), per precision at batch 128 and 512;
  auto           what train.precision/channels_last=auto choose at each batch, and the timings;
  compile        the floor with and without torch.compile (fp32 and the half precision),
                 with the wall time each took, compilation included;
  cuda_tests     the suite's needs_cuda tests (pytest output in cuda_tests.txt beside --out);
  fashion_mnist  the default recipe on real Fashion-MNIST (found offline, e.g. carried in
                 .gpu/data), its test accuracy and images/s (log in fashion_mnist_log.txt).

    benchmarks/gpu_check.sh [--cpu] [--out FILE] [--tiny] [--sections A,B] [--budget S]

--cpu runs everything on the CPU (syncs are then not counted); --tiny shrinks every phase to
seconds, for the test suite. --budget: seconds for the whole run; a section that needs more
than is left is skipped (its entry says so).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from throughput import Case, floor, measure, write_cifar10

from cnnlab.config import OptimConfig, load_config
from cnnlab.data.download import locate
from cnnlab.engine import numerics as numerics_module
from cnnlab.engine.numerics import Numerics, choose_numerics
from cnnlab.engine.optim import build_optimizer, load_optimizer_state
from cnnlab.engine.run_folder import RunFolder
from cnnlab.engine.step import make_scaler, train_step
from cnnlab.engine.sync_count import SyncCounter
from cnnlab.registry import build_model
from cnnlab.run.training import build_trainer

REPO = Path(__file__).resolve().parent.parent
SPEEDRUN = REPO / "recipes" / "cifar10" / "speedrun_gpu.yaml"

CPU_FP16_NOTE = (
    "fp16 not timed on the CPU: with torch 2.13 its backward convolutions take a slow path "
    "(preact_resnet20, batch 128: 1.9 images/s against 147 in fp32)"
)
# Seconds a section needs on a GPU at full size; with less left it is skipped (not under --tiny).
NEEDS = {"speedrun": 60, "floor_vs_loop": 60, "compile": 150, "cuda_tests": 30,
         "fashion_mnist": 40}  # fmt: skip


def precisions(device: torch.device) -> list[str]:
    """Return the precisions checked: fp32, bf16 (where the GPU has it), fp16 (GPU only)."""
    if device.type == "cpu":
        return ["fp32", "bf16"]
    return ["fp32"] + ["bf16"] * torch.cuda.is_bf16_supported() + ["fp16"]


def error_entry(exc: BaseException) -> dict[str, str]:
    """Return an exception as JSON fields: its one-line message and the trace's end."""
    return {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-2000:]}


def each_row(keys: list[dict], measure_row: Callable[..., dict]) -> list[dict]:
    """Return `keys` merged with `measure_row(**key)`, or with the error it raised: one row
    that fails costs that row only."""
    rows = []
    for key in keys:
        try:
            rows.append({**key, **measure_row(**key)})
        except Exception as exc:  # noqa: BLE001 - recorded in the row
            rows.append({**key, **error_entry(exc)})
    return rows


def environment(p: argparse.Namespace, device: torch.device, root: str) -> dict[str, Any]:
    """Python, torch, CUDA, cuDNN, the GPU and driver, and where cnnlab and its data came from."""
    import numpy
    import pydantic

    import cnnlab

    env: dict[str, Any] = {
        "python": platform.python_version(), "executable": sys.executable,
        "torch": torch.__version__, "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "numpy": numpy.__version__, "pydantic": pydantic.VERSION,
        "cnnlab": str(Path(cnnlab.__file__).parent),
        "pythonpath": os.environ.get("PYTHONPATH"), "cnnlab_data": os.environ.get("CNNLAB_DATA"),
        "cpus": os.cpu_count(),
    }  # fmt: skip
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update({"gpu": props.name, "capability": f"{props.major}.{props.minor}",
                    "gpu_memory_gib": round(props.total_memory / 2**30, 1),
                    "multiprocessors": props.multi_processor_count,
                    "bf16": torch.cuda.is_bf16_supported()})  # fmt: skip
    if shutil.which("nvidia-smi"):
        query = "--query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit"
        done = subprocess.run(["nvidia-smi", query, "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=30)  # fmt: skip
        env["nvidia_smi"] = (done.stdout or done.stderr).strip()
    return env


def fused_sgd(p: argparse.Namespace, device: torch.device, root: str) -> dict[str, Any]:
    """Fused SGD under fp16's GradScaler whose first step overflows, against unfused SGD."""
    model_name = "resnet20"
    x = torch.randn(p.fused_batch, 3, p.fused_size, p.fused_size, device=device)
    y = torch.randint(0, 10, (p.fused_batch,), device=device)
    sgd = OptimConfig(name="sgd", lr=0.1, momentum=0.9, nesterov=True)

    def fp16_step(model: torch.nn.Module, opt: torch.optim.Optimizer, scaler: Any,
                  images: torch.Tensor) -> None:  # fmt: skip
        train_step(model, opt, Numerics("fp16"), scaler, images, y, 0.0, lambda: None)

    def run(fused: bool) -> tuple[torch.nn.Module, torch.optim.Optimizer, dict[str, Any]]:
        torch.manual_seed(0)
        model = build_model(model_name, in_channels=3, **p.fused_model_options).to(device)
        opt = build_optimizer(model, sgd, fused=fused)
        scaler = make_scaler("fp16", device)
        # Freed memory full of 1e30 where the momentum buffers may be placed.
        poison = [torch.full_like(q, 1e30) for q in model.parameters()]
        del poison
        fp16_step(model, opt, scaler, torch.full_like(x, float("inf")))
        row = {"first_step_skipped": scaler.get_scale() < 2.0**16,
               "momentum_buffers_after_skip": sum("momentum_buffer" in s
                                                  for s in opt.state.values())}  # fmt: skip
        for _ in range(3):
            fp16_step(model, opt, scaler, x)
        row["max_abs_weight"] = max(q.detach().abs().max().item() for q in model.parameters())
        return model, opt, row

    fused_model, fused_opt, fused_row = run(True)
    plain_model, plain_opt, plain_row = run(False)
    diff = max((a - b).abs().max().item()
               for a, b in zip(fused_model.parameters(), plain_model.parameters()))  # fmt: skip
    out: dict[str, Any] = {"model": model_name, "batch": p.fused_batch, "fused": fused_row,
                           "unfused": plain_row, "max_weight_difference": diff}  # fmt: skip
    # Does the model's own first fp16 step overflow at the default scale 2^16?
    torch.manual_seed(0)
    model = build_model(model_name, in_channels=3, **p.fused_model_options).to(device)
    scaler = make_scaler("fp16", device)
    fp16_step(model, build_optimizer(model, sgd, fused=device.type == "cuda"), scaler, x)
    out["natural_first_step_skipped"] = scaler.get_scale() < 2.0**16
    # A resume: the unfused optimizer's state loaded into a fused one, then an fp16 step.
    try:
        load_optimizer_state(fused_opt, plain_opt.state_dict())
        fp16_step(fused_model, fused_opt, make_scaler("fp16", device), x)
        out["resume_fp16_step"] = "ok, fused=" + str(fused_opt.param_groups[0]["fused"])
    except Exception as exc:  # noqa: BLE001 - recorded
        out["resume_fp16_step"] = f"{type(exc).__name__}: {exc}"
    return out


def floor_vs_loop(p: argparse.Namespace, device: torch.device, root: str) -> list[dict]:
    """Images/s of the floor, cnnlab's steps and its whole epoch per batch and precision."""

    def row(batch: int, precision: str) -> dict[str, Any]:
        case = Case(p.model, "cifar10", root, batch, device=device.type)
        r = measure(case, Numerics(precision), p.seconds, conventional_too=False)
        return {"floor": r["a"], "graph_floor": r["g"], "graph_note": r["g_note"],
                "loop_steps": r["b"], "loop_epoch": r["e"], "eval": r["d"],
                "steps_over_floor": r["b"] / r["a"]}  # fmt: skip

    keys = [{"batch": b, "precision": q} for b in p.batches for q in precisions(device)]
    return each_row(keys, row)


def syncs(p: argparse.Namespace, device: torch.device, root: str) -> Any:
    """Host syncs per step of epoch 2 per precision (CUDA only)."""
    if device.type != "cuda":
        return {"note": "not counted on the CPU (no host-device synchronisation there)"}

    def row(precision: str) -> dict[str, Any]:
        counter = SyncCounter(epoch=2)
        cfg = load_config(None, [
            f"model.name={p.model}", "data.name=cifar10", f"data.root={root}",
            "data.train_limit=4096", "data.test_limit=512", "train.epochs=2",
            f"train.batch_size={p.batches[0]}", f"train.precision={precision}",
            f"train.device={device.type}", "bn.momentum=dynamic", "augment.erase_prob=0.5",
            "augment.erase_fill=mean",
        ])  # fmt: skip
        with tempfile.TemporaryDirectory() as tmp:
            build_trainer(
                cfg, RunFolder.create(Path(tmp) / "r"), callbacks=[counter], progress=False
            ).fit()
        steps = counter.per_step
        return {"per_step": steps, "mean": sum(steps) / max(1, len(steps))}

    return each_row([{"precision": q} for q in precisions(device)], row)


def auto(p: argparse.Namespace, device: torch.device, root: str) -> list[dict]:
    """What 'auto' picks for the model at each batch (measured fresh, not from the cache)."""

    def row(batch: int) -> dict[str, Any]:
        torch.manual_seed(0)
        model = build_model(p.model, in_channels=3)
        chosen = choose_numerics(model, p.model, (3, 32, 32), batch, device, "auto", "auto")
        return {"choice": chosen.label, "measured": chosen.measured}

    saved = numerics_module.CACHE_FILE
    with tempfile.TemporaryDirectory() as tmp:
        numerics_module.CACHE_FILE = Path(tmp) / "numerics.json"
        try:
            return each_row([{"batch": b} for b in p.batches], row)
        finally:  # later runs in this process use the user's cache again
            numerics_module.CACHE_FILE = saved


def compiled(p: argparse.Namespace, device: torch.device, root: str) -> list[dict]:
    """The floor at the first batch, fp32 and the fastest half precision, compiled or not."""

    def row(precision: str, compile: bool) -> dict[str, Any]:
        start = time.perf_counter()
        case = Case(p.model, "cifar10", root, p.batches[0], compile, device.type)
        rate = floor(case, Numerics(precision), p.seconds)
        return {"floor": rate, "wall_seconds_with_compile": time.perf_counter() - start}

    keys = [{"precision": q, "compile": on} for q in p.compile_precisions for on in (False, True)]
    return each_row(keys, row)


def speedrun(p: argparse.Namespace, device: torch.device, root: str) -> dict[str, Any]:
    """Runs of recipes/cifar10/speedrun_gpu.yaml with seeds 0 .. n-1: wall seconds and test
    accuracy of each, and their means (the recipe's protocol); the first run also pays for
    the numerics measurement and cuDNN's autotuning, so the mean time leaves it out."""
    overrides = [f"data.root={root}", f"train.device={device.type}", *p.speedrun_overrides]
    last: dict[str, Any] = {}

    def row(seed: int) -> dict[str, Any]:
        cfg = load_config(SPEEDRUN, [*overrides, f"train.seed={seed}"])
        with tempfile.TemporaryDirectory() as tmp:
            trainer = build_trainer(cfg, RunFolder.create(Path(tmp) / "r"), progress=False)
            last.update(trainer.fit())
        # train_seconds: the epochs' steps only (CUDA events), as airbench times itself.
        return {"wall_seconds": last["wall_seconds"],
                "train_seconds": sum(r["seconds"] for r in trainer.history),
                "test_accuracy": 100.0 - last["final"]["test_error"]}  # fmt: skip

    runs = each_row([{"seed": seed} for seed in range(p.speedrun_seeds)], row)
    done = [r for r in runs if "error" not in r]
    out: dict[str, Any] = {"recipe": "recipes/cifar10/speedrun_gpu.yaml",
                           "overrides": overrides, "runs": runs}  # fmt: skip
    if done:
        warm = [r["wall_seconds"] for r in done[1:]] or [done[0]["wall_seconds"]]
        out.update({"epochs": last["epochs"],
                    "test_accuracy": sum(r["test_accuracy"] for r in done) / len(done),
                    "wall_seconds": sum(warm) / len(warm),
                    "numerics": last["numerics"], "backends": last["backends"]})  # fmt: skip
    return out


def cuda_tests(p: argparse.Namespace, device: torch.device, root: str) -> dict[str, Any]:
    """Run the suite's needs_cuda tests (they skip without CUDA); output in cuda_tests.txt."""
    files = sorted(
        str(f.relative_to(REPO)) for f in (REPO / "tests").glob("test_*.py")
        if "needs_cuda" in f.read_text()
    )  # fmt: skip
    limit = max(10.0, min(240.0, p.left() - NEEDS["fashion_mnist"] * (not p.tiny)))
    command = [sys.executable, "-m", "pytest", "-q", "-m", "needs_cuda", "-p", "no:cacheprovider",
               "-o", "addopts=", *files]  # fmt: skip
    start = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=limit)
        output, code = done.stdout + done.stderr, done.returncode
    except subprocess.TimeoutExpired as exc:
        output = (exc.stdout or b"").decode(errors="replace") + f"\nstopped after {limit:.0f} s"
        code = None
    (p.out_dir / "cuda_tests.txt").write_text(output)
    lines = [line for line in output.splitlines() if line.strip()]
    seconds = round(time.perf_counter() - start, 1)
    return {"files": files, "returncode": code, "summary": lines[-1] if lines else "",
            "seconds": seconds, "output": "cuda_tests.txt"}  # fmt: skip


def fashion_mnist(p: argparse.Namespace, device: torch.device, root: str) -> dict[str, Any]:
    """The default recipe on real Fashion-MNIST: test accuracy, images/s and wall time."""
    found = locate("fashion_mnist")
    if found is None:
        return {"skipped": "Fashion-MNIST not found offline (carry it in .gpu/data/fashion_mnist)"}
    limit = max(10.0, p.left())
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        command = [sys.executable, "-m", "cnnlab", "train", "--out", str(run),
                   f"train.device={device.type}", *p.fashion_overrides]  # fmt: skip
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=limit)
            code, tail = done.returncode, (done.stdout + done.stderr)[-2000:]
        except subprocess.TimeoutExpired:
            code, tail = None, f"stopped after {limit:.0f} s"
        if (run / "log.txt").exists():
            shutil.copyfile(run / "log.txt", p.out_dir / "fashion_mnist_log.txt")
        out: dict[str, Any] = {"data": str(found), "overrides": p.fashion_overrides,
                               "returncode": code}  # fmt: skip
        if not (run / "summary.json").exists():
            return {**out, "error": tail}
        summary = json.loads((run / "summary.json").read_text())
    final = summary["final"]
    return {**out, "epochs": summary["epochs"], "test_accuracy": 100.0 - final["test_error"],
            "train_images_per_s": summary["train_images_per_s"],
            "test_images_per_s": summary["test_images_per_s"],
            "wall_seconds": summary["wall_seconds"], "numerics": summary["numerics"],
            "backends": summary["backends"], "device": summary["device"]}  # fmt: skip


SECTIONS: dict[str, Callable[[argparse.Namespace, torch.device, str], Any]] = {
    "env": environment, "fused_sgd": fused_sgd, "syncs": syncs, "speedrun": speedrun,
    "floor_vs_loop": floor_vs_loop, "auto": auto, "compile": compiled,
    "cuda_tests": cuda_tests, "fashion_mnist": fashion_mnist,
}  # fmt: skip
# gpu_check.sh's sections when none are named; gpu_first_run.sh names them all.
CHECK_SECTIONS = "syncs,speedrun,floor_vs_loop,auto,compile"


# The sections that read CIFAR-10 (real, or the synthetic set written for them).
CIFAR_SECTIONS = {"syncs", "speedrun", "floor_vs_loop", "compile"}


def cifar_root(given: str | None, tmp: Path, per_batch: int = 10000) -> tuple[str, str]:
    """Return (folder, 'real' or 'synthetic'): real CIFAR-10 found offline, else a learnable
    synthetic set in the exact pickle format (`per_batch` images a file) written to `tmp`."""
    found = locate("cifar10", given)
    if found is not None:
        return str(found), "real"
    write_cifar10(tmp, learnable=True, per_batch=per_batch)
    return str(tmp), "synthetic (learnable, CIFAR-10 pickle format; no real CIFAR-10 found)"


def settings(args: argparse.Namespace) -> None:
    """Fill in the sizes of every phase: full on a GPU, seconds long with --tiny."""
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
    # fp16 convolutions are slow on the CPU, so --tiny checks the path on a narrow resnet20
    # and 8x8 images.
    args.fused_batch, args.fused_size = (8, 8) if args.tiny else (128, 32)
    args.fused_model_options = {"base_width": 2} if args.tiny else {}
    args.fashion_overrides = (
        ["model.base_width=4", "data.train_limit=256", "data.test_limit=128", "train.epochs=1",
         "train.eval_every=1", "train.batch_size=64", "train.precision=fp32", "eval.tta=none"]
        if args.tiny else []
    )  # fmt: skip


def main() -> None:
    """Run the sections and write the JSON after each."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="run on the CPU")
    parser.add_argument(
        "--out",
        default=str(Path(os.environ.get("OUT", ".")) / "gpu_check.json"),
        help="the JSON file (default: $OUT/gpu_check.json, else ./gpu_check.json)",
    )
    parser.add_argument("--cifar-root", help="folder with real CIFAR-10 (looked up offline)")
    parser.add_argument("--tiny", action="store_true", help="seconds-long phases (tests)")
    parser.add_argument("--sections", default=CHECK_SECTIONS, help=", ".join(SECTIONS))
    parser.add_argument("--budget", type=float, default=float("inf"), help="seconds in all")
    args = parser.parse_args()
    unknown = [s for s in args.sections.split(",") if s not in SECTIONS]
    if unknown:
        sys.exit(f"gpu_check: unknown section {unknown[0]!r}; choose from {', '.join(SECTIONS)}")
    if not args.cpu and not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA GPU here; use --cpu to run the same checks on the CPU")
    settings(args)
    started = time.perf_counter()
    args.left = lambda: args.budget - (time.perf_counter() - started)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    args.out_dir = out.parent
    device = torch.device("cpu" if args.cpu else "cuda")
    results: dict[str, Any] = {
        "device": "cpu" if args.cpu else torch.cuda.get_device_name(),
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "tiny": args.tiny,
    }  # fmt: skip
    if args.cpu:
        results["note"] = CPU_FP16_NOTE
    sections = args.sections.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        root = ""
        if CIFAR_SECTIONS & set(sections):
            per_batch = 1000 if args.tiny else 10000
            root, results["data_source"] = cifar_root(args.cifar_root, Path(tmp), per_batch)
        for name in sections:
            t0 = time.perf_counter()
            need = 0 if args.tiny else NEEDS.get(name, 0)
            if args.left() < need:
                results[name] = {"skipped": f"{args.left():.0f} s left of the budget, "
                                            f"{need} s needed"}  # fmt: skip
            else:
                try:
                    results[name] = SECTIONS[name](args, device, root)
                except Exception as exc:  # noqa: BLE001 - keep the other sections' results
                    results[name] = error_entry(exc)
            results.setdefault("section_seconds", {})[name] = round(time.perf_counter() - t0, 1)
            results["total_seconds"] = round(time.perf_counter() - started, 1)
            out.write_text(json.dumps(results, indent=1) + "\n")  # partial results too
            print(f"gpu_check: {name} done in {time.perf_counter() - t0:.0f} s", flush=True)
    print(f"gpu_check: wrote {out} ({results['total_seconds']} s)")


if __name__ == "__main__":
    main()
