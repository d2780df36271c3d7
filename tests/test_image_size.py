"""`data.image_size: auto`: a folder of small images trains at their own size, not at 224."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from cnnlab.analysis.profile import count_flops
from cnnlab.data.folder import Samples
from cnnlab.data.image_size import auto_image_size
from cnnlab.registry import build_model
from tests.folder_helpers import COLOURS
from tests.helpers import cli


def _folder(root, size=(32, 32), odd_one=None):
    rng = np.random.default_rng(0)
    for split, count in (("train", 8), ("val", 3)):
        for name, colour in COLOURS.items():
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                w, h = odd_one if (odd_one and i == 5) else size
                pixels = np.clip(np.array(colour) + rng.normal(0, 30, (h, w, 3)), 0, 255)
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i}.png")
    return root


def _samples(root):
    paths = sorted(str(p) for p in (root / "train").rglob("*.png"))
    return Samples(paths, np.zeros(len(paths), dtype=np.int64))


def test_a_common_square_size_is_used_and_anything_else_gives_224(tmp_path):
    assert auto_image_size(_samples(_folder(tmp_path / "a"))) == (
        32, "all 24 sampled training images are 32x32",
    )  # fmt: skip
    size, why = auto_image_size(_samples(_folder(tmp_path / "b", odd_one=(40, 32))))
    assert size == 224 and "differ" in why
    size, why = auto_image_size(_samples(_folder(tmp_path / "c", size=(48, 32))))
    assert size == 224 and "not square" in why


def test_a_folder_of_32px_pngs_trains_at_32_and_the_log_says_why(tmp_path):
    root = _folder(tmp_path / "pngs")
    out = tmp_path / "run"
    code = cli(
        "train", "model.name=preact_resnet20", "data.name=folder", f"data.root={root}",
        "data.workers=0", "train.epochs=1", "train.batch_size=8", "train.device=cpu",
        "train.precision=fp32", "augment.crop_padding=0", "--out", str(out),
    )  # fmt: skip
    assert code == 0
    log = (out / "log.txt").read_text()
    assert "image size 32 (auto: all 24 sampled training images are 32x32)" in log
    summary = json.loads((out / "summary.json").read_text())
    model = build_model("preact_resnet20", in_channels=3, num_classes=3)
    assert summary["flops"] == count_flops(model, (3, 32, 32))
