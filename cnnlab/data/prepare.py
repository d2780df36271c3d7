"""`cnnlab data prepare-imagenet-val`: sort ImageNet's flat validation images into class folders.

Inputs:
- a flat folder of ILSVRC2012_val_00000001.JPEG ... ILSVRC2012_val_00050000.JPEG (as the
  ILSVRC2012_img_val.tar archive unpacks);
- a ground-truth file with one line per image, line i for ILSVRC2012_val_<i, 8 digits>.JPEG,
  in one of two forms:
  * a WordNet id per line (n01751748 ...), used as the class folder's name; or
  * an integer class id per line, as the devkit's
    data/ILSVRC2012_validation_ground_truth.txt (1..1000, the devkit's ILSVRC2012_ID order,
    which is *not* the sorted-wnid order), together with `--synsets FILE` listing the wnids
    in id order (line k = id k; `--index-base 0` for 0-based ids). The devkit keeps that table
    in data/meta.mat; export its first 1000 `synsets` entries' WNID fields to such a file.
  Kaggle's LOC_val_solution.csv (`ImageId,PredictionString`, first token the wnid) is read too.

Output: OUT/<wnid>/ILSVRC2012_val_<i>.JPEG, made by hard links (a copy where links are not
possible), copies, moves or symlinks (`--mode`). Files already in place are kept, so the
command can be run again after an interruption.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
from pathlib import Path

from cnnlab.errors import UserError

WNID = re.compile(r"^n\d{8}$")
VAL_NAME = "ILSVRC2012_val_{:08d}.JPEG"


def _read_synsets(path: Path) -> list[str]:
    lines = [ln.split()[0] for ln in _lines(path) if ln.strip()]
    bad = [w for w in lines if not WNID.match(w)]
    if bad:
        raise UserError(f"{path}: '{bad[0]}' is not a WordNet id like n01440764")
    return lines


def _lines(path: Path) -> list[str]:
    try:
        return Path(path).read_text().splitlines()
    except FileNotFoundError:
        raise UserError(f"{path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read it ({exc})") from None


def read_ground_truth(
    path: Path, synsets: Path | None = None, index_base: int = 1
) -> dict[str, str]:
    """Return {validation file name: wnid} from a ground-truth file (see the module doc)."""
    path = Path(path)
    if path.suffix.lower() == ".csv":
        return _read_kaggle_csv(path)
    lines = [ln.strip() for ln in _lines(path)]
    while lines and not lines[-1]:
        lines.pop()
    if not lines:
        raise UserError(f"{path}: holds no labels")
    table = _read_synsets(synsets) if synsets is not None else None
    out = {}
    for number, value in enumerate(lines, 1):
        if WNID.match(value):
            wnid = value
        elif value.lstrip("-").isdigit():
            if table is None:
                raise UserError(
                    f"{path}:{number}: '{value}' is a class id; give --synsets FILE (one wnid "
                    "per line in id order) to turn ids into folder names"
                )
            k = int(value) - index_base
            if not 0 <= k < len(table):
                raise UserError(
                    f"{path}:{number}: class id {value} is outside {index_base}.."
                    f"{len(table) - 1 + index_base} (--synsets has {len(table)} lines)"
                )
            wnid = table[k]
        else:
            raise UserError(f"{path}:{number}: expected a wnid or a class id, got {value!r}")
        out[VAL_NAME.format(number)] = wnid
    return out


def _read_kaggle_csv(path: Path) -> dict[str, str]:
    out = {}
    with path.open(newline="") as f:
        for number, row in enumerate(csv.reader(f), 1):
            if number == 1 and row and row[0] == "ImageId":
                continue
            if len(row) < 2 or not row[1].split():
                raise UserError(f"{path}:{number}: expected 'ImageId,wnid ...', got {row}")
            wnid = row[1].split()[0]
            if not WNID.match(wnid):
                raise UserError(f"{path}:{number}: '{wnid}' is not a WordNet id")
            out[f"{row[0]}.JPEG"] = wnid
    if not out:
        raise UserError(f"{path}: holds no labels")
    return out


def _place(src: Path, dst: Path, mode: str) -> None:
    if mode == "move":
        shutil.move(src, dst)
    elif mode == "symlink":
        dst.symlink_to(src.resolve())
    elif mode == "copy":
        shutil.copy2(src, dst)
    else:
        try:
            os.link(src, dst)
        except OSError:  # another file system, or links not allowed
            shutil.copy2(src, dst)


def prepare_imagenet_val(
    images: Path,
    ground_truth: Path,
    out: Path,
    synsets: Path | None = None,
    index_base: int = 1,
    mode: str = "link",
) -> dict[str, int]:
    """Arrange the flat validation images of `images` into `out`/<wnid>/; return per-class
    counts. Every labelled image must exist, and every image in the folder must be labelled."""
    images, out = Path(images), Path(out)
    if not images.is_dir():
        raise UserError(f"{images}: no such folder")
    labels = read_ground_truth(ground_truth, synsets, index_base)
    present = {p.name for p in images.iterdir() if p.name.startswith("ILSVRC2012_val_")}
    missing = sorted(set(labels) - present)
    placed = {n for n in labels if (out / labels[n] / n).exists()}
    missing = [n for n in missing if n not in placed]
    if missing:
        raise UserError(
            f"{images}: {len(missing)} labelled image(s) missing, e.g. {missing[0]} "
            f"({len(labels)} labels in {ground_truth})"
        )
    unlabelled = sorted(present - set(labels))
    if unlabelled:
        raise UserError(
            f"{images}: {len(unlabelled)} image(s) without a label in {ground_truth}, e.g. "
            f"{unlabelled[0]}; is it the ground truth of this set?"
        )
    counts: dict[str, int] = {}
    for name, wnid in sorted(labels.items()):
        folder = out / wnid
        folder.mkdir(parents=True, exist_ok=True)
        dst = folder / name
        if not dst.exists():
            _place(images / name, dst, mode)
        counts[wnid] = counts.get(wnid, 0) + 1
    return counts
