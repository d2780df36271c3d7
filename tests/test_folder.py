"""Image-folder datasets: real JPEG/PNG files, layouts, bad files, training, eval, ImageNet val."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlab.config import load_config
from cnnlab.data.folder import load_folder_splits, stratified_split
from cnnlab.data.folder_loader import (
    FolderLoader,
    ImageView,
    centre_box,
    decode_view,
    random_resized_box,
)
from cnnlab.data.pipeline import build_data
from cnnlab.data.prepare import prepare_imagenet_val
from cnnlab.engine.callbacks import Callback
from cnnlab.engine.checkpoint import load_checkpoint
from cnnlab.engine.run_folder import RunFolder
from cnnlab.errors import UserError
from cnnlab.inference.evaluate_checkpoint import evaluate_checkpoint
from cnnlab.run.training import train_new, train_resume
from tests.folder_helpers import CORRUPT, make_image_folder
from tests.helpers import assert_learned, cli, read_metrics, without_timing

MEASURED_FOLDER = 6.67  # test error (%) measured: 1 of 15 test images wrong

TINY = [
    "data.name=folder",
    "data.image_size=32",
    "model.name=resnet20",
    "model.base_width=8",
    "train.batch_size=8",
    "train.eval_batch_size=16",
    "train.precision=fp32",
    "train.channels_last=false",
    "optim.lr=0.05",
    "train.device=cpu",
]


def _cfg(root, *extra):
    return load_config(None, [*TINY, f"data.root={root}", *extra]).data


def test_a_folder_run_learns_skips_the_corrupt_file_by_name_and_evaluates(tmp_path, capsys):
    root = make_image_folder(tmp_path / "images")
    run = tmp_path / "run"
    args = [*TINY, f"data.root={root}", "data.bad_images=skip", "train.epochs=4"]
    assert cli("train", "--out", str(run), *args) == 0
    err = capsys.readouterr().err
    assert f"skipped unreadable image {root / 'train' / 'red' / CORRUPT}" in err
    log = (run / "log.txt").read_text()
    assert log.count(f"skipped unreadable image {root / 'train' / 'red' / CORRUPT}") == 1
    assert "3 classes; 50 train, 0 val, 15 test images" in log  # 3 x 16, grayscale, corrupt
    rows = read_metrics(run)
    # Three colour-coded classes: chance is 66.7 % error.
    assert_learned(rows[-1]["test_error"], measured=MEASURED_FOLDER, chance=66.7)
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["dataset"] == "folder"
    metrics = evaluate_checkpoint(run / "last.pt", None, None)
    assert metrics["images"] == 15
    assert metrics["error"] == pytest.approx(rows[-1]["test_error"])


def test_a_corrupt_file_fails_clearly_by_default(tmp_path, capsys):
    root = make_image_folder(tmp_path / "images")
    args = [*TINY, f"data.root={root}", "data.workers=0", "train.epochs=2"]
    assert cli("train", "--out", str(tmp_path / "run"), *args) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert str(root / "train" / "red" / CORRUPT) in err
    assert "data.bad_images=skip" in err


def test_a_class_folder_without_images_is_a_clear_error(tmp_path, capsys):
    root = make_image_folder(tmp_path / "images", per_class=8, val_per_class=1, corrupt=False)
    (root / "train" / "yellow").mkdir()
    (root / "train" / "yellow" / "notes.txt").write_text("not an image")
    assert cli("train", "--out", str(tmp_path / "run"), *TINY, f"data.root={root}") == 2
    err = capsys.readouterr().err
    assert f"{root / 'train' / 'yellow'}: class folder holds no images" in err


def test_decoding_gives_fixed_size_rgb_from_odd_sizes_grayscale_and_png(tmp_path):
    root = make_image_folder(tmp_path / "images", per_class=8, val_per_class=1, corrupt=False)
    gray = root / "train" / "green" / "green_gray.jpg"
    png = root / "train" / "red" / "red_001.png"
    assert Image.open(gray).mode == "L" and Image.open(png).size != (32, 32)
    rng = np.random.default_rng(0)
    for train in (True, False):
        view = ImageView(image_size=32, eval_resize=36, random_crop=train)
        for path in (gray, png):
            pixels = decode_view(str(path), view, rng)
            assert pixels.shape == (32, 32, 3) and pixels.dtype == np.uint8
    gray_view = ImageView(image_size=24, eval_resize=24, random_crop=False, gray=True)
    assert decode_view(str(png), gray_view, None).shape == (24, 24, 1)


def test_crop_boxes_stay_inside_and_keep_the_aspect_range():
    rng = np.random.default_rng(1)
    for _ in range(300):
        w, h = (int(v) for v in rng.integers(5, 400, size=2))
        left, top, right, bottom = random_resized_box(w, h, (0.08, 1.0), rng)
        assert 0 <= left < right <= w and 0 <= top < bottom <= h
        cw, ch = right - left, bottom - top
        slack = 1 / min(cw, ch)  # sides are rounded to whole pixels
        assert 3 / 4 - slack <= cw / ch <= 4 / 3 + slack, (w, h, cw, ch)
    # resize 500x375 so the short side is 256, centre 224: 328 px of the original each side.
    left, top, right, bottom = centre_box(500, 375, 256, 224)
    assert right - left == pytest.approx(375 * 224 / 256) and left == pytest.approx(
        (500 - 328.125) / 2
    )


def test_jpeg_draft_decoding_matches_a_full_decode_closely(tmp_path):
    big = np.kron(np.random.default_rng(2).integers(0, 255, (30, 40, 3)), np.ones((20, 20, 1)))
    Image.fromarray(big.astype(np.uint8)).save(tmp_path / "big.jpg", quality=95)
    view = ImageView(image_size=32, eval_resize=36, random_crop=False)
    fast = decode_view(str(tmp_path / "big.jpg"), view, None).astype(float)
    full = np.asarray(
        Image.open(tmp_path / "big.jpg").resize(
            (32, 32), Image.BILINEAR, box=centre_box(800, 600, 36, 32)
        )
    ).astype(float)
    assert np.abs(fast - full).mean() < 6.0  # same picture, decoded at 1/8 scale


def test_tiny_imagenet_val_annotations_are_read_directly(tmp_path):
    root = tmp_path / "tiny"
    wnids = ["n01443537", "n01629819"]
    for k, wnid in enumerate(wnids):
        folder = root / "train" / wnid / "images"
        folder.mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (64, 64), (k * 200, 0, 0)).save(folder / f"{wnid}_{i}.JPEG")
        (root / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
    (root / "val" / "images").mkdir(parents=True)
    lines = []
    for i, wnid in enumerate([wnids[1], wnids[0], wnids[1]]):
        Image.new("RGB", (64, 64)).save(root / "val" / "images" / f"val_{i}.JPEG")
        lines.append(f"val_{i}.JPEG\t{wnid}\t0\t0\t10\t10")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    splits = load_folder_splits(_cfg(root))
    assert splits.classes == tuple(wnids)
    assert len(splits.train) == 6 and splits.train.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert splits.test.labels.tolist() == [1, 0, 1]
    assert "Tiny ImageNet annotations" in splits.layout


def test_mini_imagenet_csv_split_pools_classes_and_holds_out_a_fraction(tmp_path):
    root = tmp_path / "mini"
    (root / "images").mkdir(parents=True)
    rows = {"train.csv": [], "test.csv": []}
    for k, wnid in enumerate(["n01532829", "n01558993", "n01704323"]):
        split = "train.csv" if k < 2 else "test.csv"
        for i in range(6):
            name = f"{wnid}{i:08d}.jpg"
            Image.new("RGB", (20, 20)).save(root / "images" / name)
            rows[split].append(f"{name},{wnid}")
    for split, lines in rows.items():
        (root / split).write_text("filename,label\n" + "\n".join(lines) + "\n")
    with pytest.raises(UserError, match="data.test_fraction"):
        load_folder_splits(_cfg(root))
    splits = load_folder_splits(_cfg(root, "data.test_fraction=0.5"))
    assert len(splits.classes) == 3
    assert np.bincount(splits.test.labels).tolist() == [3, 3, 3]
    assert not set(splits.train.paths) & set(splits.test.paths)


def test_a_single_class_folder_tree_needs_test_fraction(tmp_path):
    root = make_image_folder(tmp_path / "images", per_class=4, val_per_class=1, corrupt=False)
    with pytest.raises(UserError, match="has no train/ folder"):
        load_folder_splits(_cfg(root / "train"))
    splits = load_folder_splits(_cfg(root / "train", "data.test_fraction=0.25"))
    assert len(splits.train) + len(splits.test) == 13 and len(splits.test) == 3
    keep, held = stratified_split(np.repeat([0, 1], 8), 0.25, seed=3)
    assert len(held) == 4 and np.bincount(np.repeat([0, 1], 8)[held]).tolist() == [2, 2]
    (root / "val").rename(root / "elsewhere")
    with pytest.raises(UserError, match="no val/ folder"):
        load_folder_splits(_cfg(root))
    assert len(load_folder_splits(_cfg(root, "data.test_dir=elsewhere")).test) == 3


def test_folder_only_keys_are_refused_for_in_memory_sets_and_root_is_required():
    with pytest.raises(UserError, match="data.image_size applies only to data.name=folder"):
        load_config(None, ["data.image_size=64"])
    with pytest.raises(UserError, match="needs data.root"):
        load_config(None, ["data.name=folder"])
    with pytest.raises(UserError, match="data.mean has 2 values but data.std has 1"):
        load_config(None, ["data.mean=[0.5,0.5]", "data.std=[0.2]"])


def test_folder_loader_shards_are_disjoint_and_make_up_the_global_batch(tmp_path):
    root = make_image_folder(tmp_path / "images", per_class=8, val_per_class=3, corrupt=False)
    cfg = load_config(None, [*TINY, f"data.root={root}", "data.workers=0"])
    one = build_data(cfg, torch.device("cpu")).train
    halves = [build_data(cfg, torch.device("cpu"), rank=r, world=2).train for r in (0, 1)]
    assert isinstance(one, FolderLoader) and len(one) == len(halves[0]) == 25 // 8
    for epoch in (1, 2):
        whole = one.sampler.indices(epoch)
        parts = [h.sampler.indices(epoch) for h in halves]
        for i, batch in enumerate(whole):
            assert sorted(parts[0][i] + parts[1][i]) == sorted(batch)
            assert not set(parts[0][i]) & set(parts[1][i])
    assert one.sampler.indices(1) != one.sampler.indices(2)  # a new order every epoch


def test_prepare_imagenet_val_from_devkit_ids_wnids_or_kaggle_csv(tmp_path, capsys):
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(1, 5):
        Image.new("RGB", (8, 8)).save(flat / f"ILSVRC2012_val_{i:08d}.JPEG")
    synsets = tmp_path / "synsets.txt"
    synsets.write_text("n02119789\nn02100735\nn02110185\n")
    ids = tmp_path / "ILSVRC2012_validation_ground_truth.txt"
    ids.write_text("2\n1\n2\n3\n")
    out = tmp_path / "val"
    args = ["data", "prepare-imagenet-val", str(flat), str(ids), "--out", str(out)]
    assert cli(*args, "--synsets", str(synsets)) == 0
    assert "4 images in 3 class folders" in capsys.readouterr().out
    assert sorted(p.name for p in (out / "n02100735").iterdir()) == [
        "ILSVRC2012_val_00000001.JPEG",
        "ILSVRC2012_val_00000003.JPEG",
    ]
    assert (flat / "ILSVRC2012_val_00000001.JPEG").exists()  # linked, not moved
    assert cli(*args, "--synsets", str(synsets)) == 0  # a second run keeps what is in place
    assert cli(*args) == 2  # ids without --synsets
    assert "give --synsets FILE" in capsys.readouterr().err
    wnids = tmp_path / "wnids.txt"
    wnids.write_text("n02100735\nn02119789\nn02100735\nn02110185\n")
    counts = prepare_imagenet_val(flat, wnids, tmp_path / "val2", mode="copy")
    assert counts == {"n02100735": 2, "n02119789": 1, "n02110185": 1}
    kaggle = tmp_path / "LOC_val_solution.csv"
    kaggle.write_text("ImageId,PredictionString\n" + "".join(
        f"ILSVRC2012_val_{i:08d},n02119789 1 2 3 4\n" for i in range(1, 5)
    ))  # fmt: skip
    assert prepare_imagenet_val(flat, kaggle, tmp_path / "val3") == {"n02119789": 4}
    (flat / "ILSVRC2012_val_00000005.JPEG").write_bytes(b"")
    with pytest.raises(UserError, match="without a label"):
        prepare_imagenet_val(flat, wnids, tmp_path / "val4")


class _StopAtEpoch2(Callback):
    def on_epoch_start(self, trainer, epoch):
        if epoch == 2:
            raise KeyboardInterrupt  # as if the process were killed after epoch 1's checkpoint


def test_a_stopped_folder_run_resumes_exactly_with_worker_processes(tmp_path):
    root = make_image_folder(tmp_path / "images", per_class=6, val_per_class=2, corrupt=False)
    cfg = load_config(None, [*TINY, f"data.root={root}", "train.epochs=2", "augment.cutout_size=8"])
    whole, stopped = RunFolder.create(tmp_path / "whole"), RunFolder.create(tmp_path / "stopped")
    train_new(cfg, whole)
    with pytest.raises(KeyboardInterrupt):
        train_new(cfg, stopped, [_StopAtEpoch2()])
    assert load_checkpoint(stopped.last)["epoch"] == 1
    train_resume(cfg, RunFolder.open(stopped.path))
    a, b = load_checkpoint(whole.last)["model"], load_checkpoint(stopped.last)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert without_timing(read_metrics(whole.path)) == without_timing(read_metrics(stopped.path))


@pytest.mark.parametrize(
    ("override", "message"),
    [("augment.flip_mode=alternating", "flip_mode=alternating"),
     ("train.sampling=replacement", "sampling=replacement")],
)  # fmt: skip
def test_in_memory_only_options_are_refused_for_image_folders(tmp_path, override, message):
    root = make_image_folder(tmp_path / "images", per_class=8, val_per_class=1, corrupt=False)
    cfg = load_config(None, [*TINY, f"data.root={root}", override])
    with pytest.raises(UserError, match=f"{message} works on in-memory datasets only"):
        build_data(cfg, torch.device("cpu"))
