"""Eager against compiled training steps, fp32 and bf16, measured side by side in one process.

Each round times a few steps of every case in turn, so a busy machine slows all cases alike;
the median over rounds is printed with its ratio to eager fp32. This is the measurement behind
`train.compile=auto` (which times eager and compiled steps at the run's chosen precision).

    python benchmarks/compile_choice.py [--model preact_resnet20] [--size 32] [--channels 1]
        [--batch 128] [--rounds 4] [--steps 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import cnnlab


def main() -> None:
    """Print images/s of eager and compiled steps in fp32 and bf16, with the machine's threads."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="preact_resnet20")
    p.add_argument("--size", type=int, default=32, help="image side (hysts' Fashion crops: 32)")
    p.add_argument("--channels", type=int, default=1)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--steps", type=int, default=5, help="steps per case per round")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(args.batch, args.channels, args.size, args.size)
    y = torch.randint(0, 10, (args.batch,))
    cases = {}
    for compiled in (False, True):
        for precision in ("fp32", "bf16"):
            model = cnnlab.build_model(args.model, in_channels=args.channels, num_classes=10)
            opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
            cases[f"{'compiled' if compiled else 'eager'} {precision}"] = (
                torch.compile(model) if compiled else model,
                opt,
                precision,
            )

    def step(forward: torch.nn.Module, opt: torch.optim.Optimizer, precision: str) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = torch.nn.functional.cross_entropy(forward(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for name, case in cases.items():  # warm-up: allocation, kernel choice, compilation
        start = time.perf_counter()
        step(*case)
        print(f"{name}: first step {time.perf_counter() - start:.1f} s", flush=True)
    rates: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.rounds):
        for name, case in cases.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                step(*case)
            rates[name].append(args.steps * args.batch / (time.perf_counter() - start))
    base = statistics.median(rates["eager fp32"])
    print(f"{args.model}, batch {args.batch}, {args.channels}x{args.size}x{args.size}, "
          f"{args.threads} thread(s), torch {torch.__version__}")  # fmt: skip
    for name, values in rates.items():
        rate = statistics.median(values)
        print(f"{name:14s} {rate:7.0f} images/s  (x{rate / base:.2f} eager fp32)")


if __name__ == "__main__":
    main()
