"""`cnnlab predict`: image files classified exactly as the run evaluates its own data."""

import csv
import io
import json
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlab.data.sources import load_split
from cnnlab.inference.evaluate_checkpoint import evaluate_checkpoint
from tests.folder_helpers import make_image_folder
from tests.helpers import FASHION, SMALL, cli, needs_fashion

TEST_IMAGES = 1000


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """Fashion-MNIST with its first 1000 test images only, in the real IDX format, so that
    `cnnlab eval` and the PNGs cover the same images at a fraction of the cost."""
    root = tmp_path_factory.mktemp("fashion")
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
        (root / f"{stem}.gz").symlink_to(FASHION / f"{stem}.gz")
    test = load_split("fashion_mnist", "test", str(FASHION), download=False)
    images = test.images[:TEST_IMAGES, ..., 0].numpy()
    labels = test.labels[:TEST_IMAGES].numpy().astype(np.uint8)
    header = struct.pack(">IIII", 0x803, len(images), 28, 28)
    (root / "t10k-images-idx3-ubyte").write_bytes(header + images.tobytes())
    (root / "t10k-labels-idx1-ubyte").write_bytes(struct.pack(">II", 0x801, len(labels))
                                                  + labels.tobytes())  # fmt: skip
    return root


@pytest.fixture(scope="module")
def run(tmp_path_factory, data_root):
    """A 1-epoch narrow preact-ResNet-20 on 2000 Fashion-MNIST images."""
    out = tmp_path_factory.mktemp("predict") / "run"
    args = [a for a in SMALL if not a.startswith(("train.epochs", "data."))]
    code = cli("train", "--out", str(out), f"data.root={data_root}", "data.train_limit=2000",
               "train.epochs=1", "optim.lr=0.1", "eval.tta=none", *args)  # fmt: skip
    assert code == 0
    return out


@pytest.fixture(scope="module")
def test_pngs(tmp_path_factory, data_root):
    """Every test image of `data_root` as an 8-bit gray PNG named after its label."""
    folder = tmp_path_factory.mktemp("pngs")
    test = load_split("fashion_mnist", "test", str(data_root), download=False)
    for i, (image, label) in enumerate(zip(test.images.numpy(), test.labels.tolist())):
        Image.fromarray(image[..., 0], "L").save(folder / f"{i:05d}_{label}.png")
    return folder, test


def _rows(text):
    return list(csv.DictReader(io.StringIO(text)))


@needs_fashion
def test_predicting_the_test_pngs_gives_the_accuracy_of_eval(run, test_pngs, capsys):
    folder, test = test_pngs
    capsys.readouterr()
    assert cli("predict", str(run / "last.pt"), str(folder), "--format", "csv") == 0
    rows = _rows(capsys.readouterr().out)
    assert len(rows) == len(test.labels) == TEST_IMAGES
    wrong = sum(int(r["index_1"]) != int(r["path"].rsplit("_", 1)[1][:-4]) for r in rows)
    metrics = evaluate_checkpoint(run / "last.pt", None, None)
    assert metrics["images"] == TEST_IMAGES
    assert 100.0 * wrong / len(rows) == pytest.approx(metrics["error"], abs=1e-9)
    assert metrics["error"] < 75  # the model learnt something, so the match means something
    # And the class names are Fashion-MNIST's.
    assert {r["class_1"] for r in rows} <= {"T-shirt/top", "Trouser", "Pullover", "Dress",
        "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"}  # fmt: skip


@needs_fashion
def test_any_pil_mode_gives_the_prediction_of_the_gray_original(run, test_pngs, tmp_path, capsys):
    folder, test = test_pngs
    gray = test.images[3, ..., 0].numpy()
    base = Image.fromarray(gray, "L")
    base.save(tmp_path / "a_gray.png")
    base.convert("RGB").save(tmp_path / "b_rgb.png")
    base.convert("RGBA").save(tmp_path / "c_rgba.png")
    base.convert("P").save(tmp_path / "d_palette.png")
    base.convert("LA").save(tmp_path / "e_gray_alpha.png")
    Image.fromarray(gray.astype(np.uint16) * 257).save(tmp_path / "f_16bit.png")
    assert Image.open(tmp_path / "f_16bit.png").mode.startswith("I")
    Image.fromarray(gray.astype(np.float32) / 255, "F").save(tmp_path / "h_float.tif")
    base.resize((56, 56), Image.NEAREST).save(tmp_path / "g_twice_the_size.png")
    capsys.readouterr()
    code = cli("predict", str(run / "last.pt"), str(tmp_path), "--format", "json", "--top-k", "3")
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    preds = {p["path"].rsplit("/", 1)[1]: p["top"] for p in doc["predictions"]}
    assert len(preds) == 8 and doc["unreadable"] == []
    reference = preds["a_gray.png"]
    assert len(reference) == 3
    assert [t["probability"] for t in reference] == sorted(
        (t["probability"] for t in reference), reverse=True
    )
    names = ("b_rgb.png", "c_rgba.png", "d_palette.png", "e_gray_alpha.png", "f_16bit.png",
             "h_float.tif")  # fmt: skip
    for name in names:
        assert [t["index"] for t in preds[name]] == [t["index"] for t in reference], name
        for got, want in zip(preds[name], reference):
            assert got["probability"] == pytest.approx(want["probability"], abs=1e-6), name
    # A 2x nearest-neighbour upscale, resized back down, stays close to the original.
    assert preds["g_twice_the_size.png"][0]["index"] == reference[0]["index"]


@needs_fashion
def test_an_undecodable_image_is_named_and_the_others_are_still_predicted(run, tmp_path, capsys):
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(tmp_path / "good.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (tmp_path / "empty.png").write_bytes(b"")
    Image.new("1", (10_000, 10_000)).save(tmp_path / "bomb.png")  # 100 M pixels in 12 kB
    capsys.readouterr()
    assert cli("predict", str(run / "last.pt"), str(tmp_path), "--format", "csv") == 2
    captured = capsys.readouterr()
    assert [r["path"].rsplit("/", 1)[1] for r in _rows(captured.out)] == ["good.png"]
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and "cannot read 3 images" in err[0], err
    assert "broken.png" in err[0] and "the other 1 image(s)" in err[0]
    assert "empty.png (ValueError: empty file (0 bytes))" in err[0]
    assert "bomb.png (ValueError: refused as a possible decompression bomb" in err[0]


@needs_fashion
def test_flip_tta_and_the_table_format(run, tmp_path, capsys):
    Image.fromarray(np.full((28, 28), 128, np.uint8)).save(tmp_path / "grey.png")
    capsys.readouterr()
    assert cli("predict", str(run / "last.pt"), str(tmp_path / "grey.png"), "--tta", "flip") == 0
    out = capsys.readouterr().out
    assert "1 image(s), preact_resnet20, tta flip" in out


@needs_fashion
def test_inputs_that_are_not_a_cnnlab_checkpoint_or_images_are_one_line_errors(
    run, tmp_path, capsys
):
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(image)
    cases = [
        ((str(tmp_path / "other.pt"), str(image)), "is not a cnnlab checkpoint"),
        ((str(tmp_path / "notes.txt"), str(image)), "cannot be read"),
        ((str(run / "last.pt"), str(tmp_path / "missing.png")), "no such file or folder"),
        ((str(run / "last.pt"), str(image), "--top-k", "0"), "--top-k"),
    ]
    for args, message in cases:
        capsys.readouterr()
        assert cli("predict", *args) == 2, args
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], (args, err)


def test_a_folder_run_predicts_with_its_class_folders_even_once_the_folder_is_gone(
    tmp_path, capsys
):
    root = make_image_folder(tmp_path / "images", per_class=8, val_per_class=4, corrupt=False)
    run = tmp_path / "run"
    args = ["data.name=folder", f"data.root={root}", "data.image_size=32", "data.workers=0",
            "model.name=resnet20", "model.base_width=8", "train.batch_size=8",
            "train.eval_batch_size=16", "train.epochs=2", "train.precision=fp32",
            "train.channels_last=false", "optim.lr=0.05"]  # fmt: skip
    assert cli("train", "--out", str(run), *args) == 0
    metrics = evaluate_checkpoint(run / "last.pt", None, None)
    moved = tmp_path / "elsewhere"
    root.rename(moved)  # the training folder is gone; the checkpoint has the class names
    capsys.readouterr()
    assert cli("predict", str(run / "last.pt"), str(moved / "val"), "--format", "csv") == 0
    rows = _rows(capsys.readouterr().out)
    assert len(rows) == metrics["images"] == 12
    # Each image lies in its class's folder: val/<class>/<file>.
    wrong = sum(r["class_1"] != r["path"].split("/")[-2] for r in rows)
    assert 100.0 * wrong / len(rows) == pytest.approx(metrics["error"])


@needs_fashion
def test_a_run_folder_predicts_with_its_last_checkpoint(run, tmp_path, capsys):
    image = tmp_path / "x.png"
    Image.fromarray(np.full((28, 28), 200, np.uint8)).save(image)
    capsys.readouterr()
    assert cli("predict", str(run / "last.pt"), str(image), "--format", "csv") == 0
    by_file = capsys.readouterr().out
    assert cli("predict", str(run), str(image), "--format", "csv") == 0
    assert capsys.readouterr().out == by_file
