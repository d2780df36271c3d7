"""The ImageNet-scale recipes run end to end on a miniature folder in ImageNet's on-disk layout,
and the pieces of their data path that the official loaders had (PCA lighting, crop areas above
1, the named image-folder datasets)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlab.config import RECIPES_DIR, load_config
from cnnlab.data.folder import load_folder_splits
from cnnlab.data.folder_loader import (
    FolderImages,
    ImageView,
    PathTable,
    decode_view,
    lighting_noise,
)
from cnnlab.data.pipeline import steps_per_epoch
from cnnlab.errors import UserError
from tests.folder_helpers import make_imagenet_folder
from tests.helpers import cli, read_metrics

IMAGENET_RECIPES = sorted((RECIPES_DIR / "imagenet").glob("*.yaml"))
torch.set_num_threads(1)  # full-size networks on 32x32 inputs: threads would only contend


@pytest.fixture(scope="module")
def imagenet_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_imagenet_folder(tmp_path_factory.mktemp("imagenet"))


def _smoke_overrides(recipe: Path, root: Path) -> list[str]:
    """Two training steps at 32x32 on 4 images, the recipe's protocol otherwise."""
    cfg = load_config(recipe)
    extra = [
        f"data.root={root}", "data.image_size=32", "data.eval_resize=37", "data.workers=0",
        "data.train_limit=4", "train.batch_size=2", "train.eval_batch_size=3",
        "train.epochs=1", "train.device=cpu",
    ]  # fmt: skip
    if cfg.schedule.milestones:
        extra.append("schedule.milestones=[1]")
    if cfg.schedule.warmup_epochs:  # the schedule's shape in one epoch: no warm-up, decay over it
        extra += ["schedule.warmup_epochs=0", "schedule.decay_start_epoch=0",
                  "schedule.decay_epochs=1"]  # fmt: skip
    return extra


@pytest.mark.slow  # full-size ImageNet networks: about 5-20 s each on a CPU core
@pytest.mark.parametrize("recipe", IMAGENET_RECIPES, ids=lambda p: p.name)
def test_imagenet_recipe_runs_on_an_imagenet_layout_folder(recipe, imagenet_root, tmp_path):
    run = tmp_path / "run"
    args = _smoke_overrides(recipe, imagenet_root)
    assert cli("train", "--config", str(recipe), "--out", str(run), *args) == 0
    rows = read_metrics(run)  # NR adds an epoch for each one before its rebuild
    assert rows[0]["epoch"] == 1 and all(0 <= r["test_error"] <= 100 for r in rows)
    assert "3 classes; 4 train, 0 val, 3 test images" in (run / "log.txt").read_text()


def test_imagenet_recipes_lay_out_the_full_schedule_without_the_images():
    # 1,281,167 training images: NR's batch 128 -> 10,009 steps, ReCU's 512 -> 2,502 (the
    # ragged last batch dropped).
    steps = {p.stem: steps_per_epoch(load_config(p)) for p in IMAGENET_RECIPES}
    assert steps["nr_resnet50"] == 10_009 and steps["recu_resnet18_1w1a"] == 2_502


def test_a_named_folder_dataset_without_root_names_the_layout():
    cfg = load_config(RECIPES_DIR / "imagenet" / "nr_resnet18.yaml")
    with pytest.raises(UserError, match="data.name=imagenet reads an image folder: set data.root"):
        load_folder_splits(cfg.data)


def test_mini_imagenet_counts_its_held_out_fraction_without_the_images(tmp_path):
    cfg = load_config(None, ["data.name=mini_imagenet", "data.test_fraction=0.1667",
                             "train.batch_size=100"])  # fmt: skip
    assert steps_per_epoch(cfg) == 500  # 100 classes x (600 - 100)
    # With its root, the name reads Ravi & Larochelle's CSV split (images/ + CSV files).
    (tmp_path / "images").mkdir()
    rows = []
    for wnid in ("n01532829", "n01558993"):
        for i in range(6):
            Image.new("RGB", (84, 84)).save(tmp_path / "images" / f"{wnid}{i:08d}.jpg")
            rows.append(f"{wnid}{i:08d}.jpg,{wnid}")
    (tmp_path / "train.csv").write_text("filename,label\n" + "\n".join(rows) + "\n")
    data = cfg.data.model_copy(update={"root": str(tmp_path)})
    splits = load_folder_splits(data)
    assert splits.classes == ("n01532829", "n01558993") and len(splits.test) == 2


def test_training_views_repeat_for_the_same_seed_epoch_and_image(imagenet_root):
    # The crop and the lighting noise come from (seed, epoch, index): a resumed epoch or another
    # worker decodes the same pixels; the next epoch draws new ones.
    paths = [str(p) for p in sorted((imagenet_root / "train").rglob("*.JPEG"))]
    view = ImageView(32, 32, random_crop=True, crop_scale=(0.08, 1.25), lighting_std=0.1)
    images = FolderImages(PathTable(paths), np.zeros(len(paths), np.int64), view, seed=3)
    first = images[(2, 5)][0]
    assert torch.equal(first, FolderImages(images.paths, images.labels, view, 3)[(2, 5)][0])
    assert not torch.equal(first, images[(2, 6)][0])


def test_lighting_noise_shifts_each_channel_as_recus_loader_does():
    # ReCU adds eigvec @ (alpha * eigval) to the 0-255 pixels and truncates to uint8: with
    # alpha ~ N(0, 0.1^2) every shift lies within +-1, so a channel drops by one level where its
    # shift is negative and keeps its value otherwise.
    pixels = np.full((4, 4, 3), 100, dtype=np.uint8)
    for seed in range(20):
        rng = np.random.default_rng(seed)
        out = lighting_noise(pixels, 0.1, rng)
        rng = np.random.default_rng(seed)
        alpha = (rng.standard_normal(3) * 0.1).astype(np.float32)
        eigvec = np.array([[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140],
                           [-0.5836, -0.6948, 0.4203]])  # fmt: skip
        shift = eigvec @ (alpha * [0.2175, 0.0188, 0.0045])
        assert out[0, 0].tolist() == [99 if s < 0 else 100 for s in shift]
        assert (out == out[0, 0]).all()  # one shift per channel for the whole image
    assert lighting_noise(np.zeros((2, 2, 3), np.uint8), 5.0, rng).min() == 0  # clipped


def test_recus_crop_area_above_one_falls_back_to_the_centre_crop(imagenet_root):
    # scale (1.1, 1.25) never fits inside the image: all 10 attempts fail and the view is the
    # centre crop (clamped to aspect 3/4..4/3), as torchvision's RandomResizedCrop does.
    path = str(next((imagenet_root / "train").rglob("*.JPEG")))
    view = ImageView(image_size=16, eval_resize=16, random_crop=True, crop_scale=(1.1, 1.25))
    views = {decode_view(path, view, np.random.default_rng(s)).tobytes() for s in range(5)}
    assert len(views) == 1
    assert load_config(None, ["data.name=imagenet", "data.crop_scale=[0.08,1.25]"])
