"""Write docs/reproduction.yaml and docs/reproduction.md: one ledger row per reference recipe.

    python scripts/reproduction_ledger.py

Each row records what the recipe trains (network and its measured parameter count, optimizer,
schedule, epochs, batch), the paper's parameter count where a source gives one, the row's
protocol, and its status on this project's hardware with the evidence. Status, evidence and
the paper's counts are kept from the existing ledger (they are facts, not derived from the
recipe); the rest is read from the recipes. tests/test_ledger.py fails when a recipe no longer
matches its ledger row, so changing a recipe's protocol means re-running this script and
committing the ledger diff beside it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import yaml
from pydantic import BaseModel

from cnnlab.config import RECIPES_DIR, load_config
from cnnlab.data.sources import dataset_info
from cnnlab.registry import build_model

DOCS = Path(__file__).resolve().parent.parent / "docs"
LEDGER = DOCS / "reproduction.yaml"
PAGE = DOCS / "reproduction.md"
STATUSES = ("reproduced at full length", "short run only", "not run on this hardware")
KEPT = ("paper_params", "status", "evidence")
# Recipe folders of ImageNet-scale datasets: their rows come last, in a section of their own.
LARGE_SCALE = ("imagenet", "mini_imagenet")


def _large_scale(path: Path) -> bool:
    return path.parent.name in LARGE_SCALE


def reference_recipes() -> list[Path]:
    """Return every recipe with a reference block (the rows the ledger covers), sorted, the
    ImageNet-scale ones last."""
    found = []
    for path in sorted(RECIPES_DIR.rglob("*.yaml"), key=lambda p: (_large_scale(p), p)):
        if load_config(path).reference is not None:
            found.append(path)
    return found


def measured_params(path: Path) -> int:
    """Count the parameters of the recipe's network as built for its dataset (meta device)."""
    cfg = load_config(path)
    info = dataset_info(cfg.data.name)
    with torch.device("meta"):
        model = build_model(
            cfg.model.name,
            in_channels=info.channels,
            num_classes=info.num_classes,
            **cfg.model.options(),
        )
    return sum(p.numel() for p in model.parameters())


def _changed(section: BaseModel) -> dict[str, Any]:
    """Return the keys of a config section that differ from that section's defaults."""
    default = type(section)().model_dump(mode="json")
    return {k: v for k, v in section.model_dump(mode="json").items() if v != default[k]}


def _transforms(cfg: Any) -> dict[str, dict[str, Any]]:
    """Return the train and test transforms: the crop and flip always (their defaults are a
    choice too), then every other change; an image folder's crops are its data.* view."""
    train = {"crop_padding": cfg.augment.crop_padding, "flip": cfg.augment.flip}
    train |= _changed(cfg.augment)
    test = _changed(cfg.eval)
    d = cfg.data
    if d.is_image_folder() and d.train_crop == "random_resized":
        # The random resized crop replaces the padded crop (data/pipeline.py, _build_folder).
        train.pop("crop_padding")
        view = {"random_resized_crop": d.image_size, "crop_scale": list(d.crop_scale)}
        if d.lighting_std:
            view["lighting_std"] = d.lighting_std
        train = view | train
        test = {"resize": d.eval_resize, "centre_crop": d.image_size} | test
    return {"train_transform": train, "test_transform": test}


def protocol_of(path: Path) -> dict[str, Any]:
    """Return the recipe's training protocol as the ledger states it."""
    cfg = load_config(path)
    s = cfg.schedule
    schedule: dict[str, Any] = {"name": s.name}
    if s.name == "multistep":
        schedule |= {"milestones": list(s.milestones), "gamma": s.gamma}
    if s.name == "cosine":
        schedule["lr_min_factor"] = s.lr_min_factor
    if s.warmup_epochs or s.warmup_steps:
        schedule |= {"warmup_epochs": s.warmup_epochs, "warmup_steps": s.warmup_steps}
    # Keys that place the schedule's steps, stated only where a recipe sets them.
    if s.interval != "step":
        schedule["interval"] = s.interval
    if s.step_offset:
        schedule["step_offset"] = s.step_offset
    for key in ("decay_start_epoch", "decay_epochs"):
        if getattr(s, key) is not None:
            schedule[key] = getattr(s, key)
    if s.reset_state_at_milestones:
        schedule["reset_state_at_milestones"] = True
    optimizer = {"name": cfg.optim.name, "lr": cfg.optim.lr, "weight_decay": cfg.optim.weight_decay}
    optimizer |= {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.optim.options().items()}
    return {
        "network": {"model": cfg.model.name, **cfg.model.options()},
        "optimizer": optimizer,
        "schedule": schedule,
        "epochs": cfg.train.epochs,
        "batch": cfg.train.batch_size,
        **_transforms(cfg),
        # Normalisation constants, held-out images, ragged batches and sampling, where set.
        "loader": {
            **{k: v for k, v in _changed(cfg.data).items() if k not in ("name", "root")},
            **{k: v for k, v in _changed(cfg.train).items() if k in ("drop_last", "sampling")},
        },
    }


def ledger_rows() -> list[dict[str, Any]]:
    """Build the rows from the recipes, keeping the facts of the existing ledger."""
    old = {}
    if LEDGER.exists():
        old = {r["recipe"]: r for r in yaml.safe_load(LEDGER.read_text())["rows"]}
    rows = []
    for path in reference_recipes():
        name = str(path.relative_to(RECIPES_DIR))
        ref = load_config(path).reference
        kept = {k: old.get(name, {}).get(k) for k in KEPT}
        rows.append(
            {
                "recipe": name,
                "row": ref.row,
                "value": ref.value,
                "source": ref.source,
                "protocol": ref.protocol,
                "selection": ref.selection,
                "params": measured_params(path),
                "paper_params": kept["paper_params"],
                **protocol_of(path),
                # What was checked against the official source (each setting with its
                # repository@commit file:line in the recipe) and what the sources did not settle.
                "verified": sorted(ref.settings),
                "unconfirmed": list(ref.unconfirmed),
                "status": kept["status"] or "not run on this hardware",
                "evidence": kept["evidence"],
            }
        )
    return rows


def _verification(row: dict[str, Any]) -> str:
    if row["protocol"].startswith("unverified"):
        return "unverified: no official source could be read"
    return (
        f"{len(row['verified'])} settings traced to {row['source'].split(' ')[0]} "
        f"(file:line in the recipe); {len(row['unconfirmed'])} unconfirmed"
    )


def _keys(values: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in values.items())


def _millions(n: int) -> str:
    return f"{n / 1e6:.2f}M"


def render_page(rows: list[dict[str, Any]]) -> str:
    """Return docs/reproduction.md: the ledger as one line per reference row."""
    counts = {s: sum(r["status"] == s for r in rows) for s in STATUSES}
    lines = [
        "# Reproduction ledger",
        "",
        "One line per reference row: the recipe, the network with its parameter count as cnnlab",
        "builds it (measured) beside the paper's, the row's protocol, and its status on this",
        "project's hardware (2 shared CPU cores, no GPU). A status claims no more than was",
        "measured; the evidence column gives the command and figure. Written, with",
        "`docs/reproduction.yaml`, by `python scripts/reproduction_ledger.py` from the recipes;",
        "`tests/test_ledger.py` checks every recipe against it (schedule kind and milestones,",
        "optimizer and its settings, network and its init options, epochs, batch, the train and",
        "test transforms, normalisation and ragged batches). Each recipe's `reference:` block",
        "names the source line behind each setting and what could not be confirmed.",
        "",
        "Status counts: " + "; ".join(f"{s}: {n}" for s, n in counts.items()) + ".",
        "",
        "| recipe | row | ref. error % | network | params (cnnlab / paper) | optimizer | schedule "
        "| epochs / batch | train / test transform | protocol | verified against the source "
        "| status | evidence |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    header = lines[-2:]
    for r in rows:
        if _large_scale(Path(r["recipe"])) and header:
            lines += [
                "",
                "## ImageNet-scale rows",
                "",
                "Image-folder datasets (`data.name=imagenet`, `mini_imagenet`; docs/imagenet.md).",
                "",
                *header,
            ]
            header = []
        net = r["network"]
        options = ", ".join(f"{k}={v}" for k, v in net.items() if k != "model")
        network = net["model"] + (f" ({options})" if options else "")
        opt = r["optimizer"]
        opt_text = ", ".join(f"{k} {v}" for k, v in opt.items() if k != "name")
        sched = r["schedule"]
        sched_text = sched["name"] + "".join(f", {k} {v}" for k, v in sched.items() if k != "name")
        cells = [
            f"`{r['recipe']}`",
            r["row"],
            str(r["value"]),
            network,
            f"{_millions(r['params'])} / {r['paper_params'] or 'not stated'}",
            f"{opt['name']}: {opt_text}",
            sched_text,
            f"{r['epochs']} / {r['batch']}",
            f"{_keys(r['train_transform'])} / {_keys(r['test_transform']) or 'as is'}",
            f"{r['protocol']} [{r['selection']}]",
            _verification(r),
            r["status"],
            r["evidence"] or "–",
        ]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    """Rewrite the ledger and its page from the recipes."""
    rows = ledger_rows()
    header = (
        "# Written by scripts/reproduction_ledger.py; status, evidence, paper_params by hand.\n"
    )
    LEDGER.write_text(header + yaml.safe_dump({"rows": rows}, sort_keys=False, width=100))
    PAGE.write_text(render_page(rows))
    print(f"{len(rows)} rows -> {LEDGER.relative_to(DOCS.parent)}, {PAGE.relative_to(DOCS.parent)}")


if __name__ == "__main__":
    main()
