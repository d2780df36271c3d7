"""Short real Fashion-MNIST runs: learning, the run folder, repeatability, eval, best.pt."""

import json

import torch
import yaml

from cnnlab.engine.checkpoint import load_checkpoint
from cnnlab.inference.evaluate_checkpoint import evaluate_checkpoint
from tests.helpers import SMALL, assert_learned, cli, needs_fashion, read_metrics, without_timing

MEASURED_TRAIN = 24.25  # test error (%) measured: 3 epochs of 3,000 images, fp32 on the CPU

pytestmark = needs_fashion


def test_a_short_real_run_learns_and_fills_its_run_folder(tmp_path, capsys):
    run = tmp_path / "run"
    args = [a for a in SMALL if not a.startswith(("data.train_limit", "train.epochs"))]
    assert cli("train", "--out", str(run), "data.train_limit=3000", "train.epochs=3", *args) == 0
    out = capsys.readouterr().out
    assert str(run) in out.splitlines()[-1]  # the run folder's path is printed at the end

    names = {p.name for p in run.iterdir()}
    expected = {"config.yaml", "metrics.jsonl", "log.txt", "last.pt", "summary.json", "curves.png"}
    assert expected <= names
    assert "best.pt" not in names  # no validation split: last.pt is the only checkpoint
    rows = read_metrics(run)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    for key in ("lr", "train_loss", "train_error", "test_loss", "test_error", "test_top5_error",
                "seconds", "images_per_s"):  # fmt: skip
        assert key in rows[-1], key
    # 10 classes: chance is 90 % error. A few hundred steps must do far better.
    assert_learned(rows[-1]["test_error"], measured=MEASURED_TRAIN, chance=90.0)
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]

    summary = json.loads((run / "summary.json").read_text())
    assert summary["final"]["test_error"] == rows[-1]["test_error"]
    assert summary["params"] > 0 and summary["flops"] > 0
    assert summary["torch"] == torch.__version__ and summary["device"] == "cpu"
    assert summary["numerics"]["precision"] == "fp32"
    assert (run / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_same_seed_gives_bitwise_the_same_run_and_config_yaml_repeats_it(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert cli("train", "--out", str(a), *SMALL) == 0
    assert cli("train", "--config", str(a / "config.yaml"), "--out", str(b)) == 0
    wa = load_checkpoint(a / "last.pt")["model"]
    wb = load_checkpoint(b / "last.pt")["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert without_timing(read_metrics(a)) == without_timing(read_metrics(b))
    assert yaml.safe_load((a / "config.yaml").read_text()) == yaml.safe_load(
        (b / "config.yaml").read_text()
    )


def test_eval_reproduces_the_final_test_metrics(tmp_path, capsys):
    run = tmp_path / "run"
    assert cli("train", "--out", str(run), *SMALL) == 0
    final = read_metrics(run)[-1]
    metrics = evaluate_checkpoint(run / "last.pt", None, None)
    # The run evaluated on the first 400 test images; eval uses all 10,000.
    assert metrics["images"] == 10000 and metrics["dataset"] == "fashion_mnist"
    assert abs(metrics["error"] - final["test_error"]) < 10
    capsys.readouterr()
    assert cli("eval", str(run / "last.pt")) == 0
    assert "top-1 error" in capsys.readouterr().out
    # This run held out no validation split, so `--split val` is a one-line error.
    assert cli("eval", str(run / "last.pt"), "--split", "val") == 2
    assert "data.val_size" in capsys.readouterr().err


def test_best_checkpoint_is_chosen_on_the_validation_split(tmp_path):
    run = tmp_path / "run"
    assert cli("train", "--out", str(run), "data.val_size=300", *SMALL) == 0
    rows = read_metrics(run)
    assert all("val_error" in r and "test_error" in r for r in rows)
    best_epoch = min(rows, key=lambda r: r["val_error"])["epoch"]
    best = load_checkpoint(run / "best.pt")
    assert best["epoch"] == best_epoch
    assert best["best"]["chosen_by"] == "val"
    summary = json.loads((run / "summary.json").read_text())
    assert "validation" in summary["protocol"]

    # `cnnlab eval --split val` judges a saved model on the same held-out images the run used.
    val = evaluate_checkpoint(run / "last.pt", None, None, split="val")
    assert val["images"] == 300 and abs(val["error"] - rows[-1]["val_error"]) < 1e-6
    assert val["tta"] == "flip"  # the run's own eval.tta (the default recipe's)
    plain = evaluate_checkpoint(run / "last.pt", None, None, split="val", tta="none")
    assert plain["tta"] == "none" and plain["loss"] != val["loss"]
    # The whole training split but the validation images (no TTA: half the cost of 59,700).
    rest = evaluate_checkpoint(run / "last.pt", None, None, split="train", tta="none")
    assert rest["images"] == 60000 - 300
