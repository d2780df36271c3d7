"""The Python API as a newcomer meets it: training says what it does (epochs, the numerics
`auto` chose), dir(cnnlab) lists the public names, numpy arrays are data, and a run folder names
its model for eval, predict and export."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import cnnlab
from cnnlab.errors import UserError
from cnnlab.run.saved_model import load_trained_model
from tests.helpers import TINY_CPU, cli, needs_fashion, tiny_rgb_data


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_dir_lists_the_public_names():
    names = dir(cnnlab)
    assert set(cnnlab.__all__) <= set(names) and "__version__" in names
    assert "importlib" not in names


def test_from_tensors_takes_numpy_arrays():
    data = tiny_rgb_data()
    arrays = [t.numpy() for t in (data.train.images, data.train.labels, data.test.images,
                                  data.test.labels)]  # fmt: skip
    again = cnnlab.datasets.from_tensors(*arrays, mean=(0.5,) * 3, std=(0.25,) * 3)
    assert torch.equal(again.train.images, data.train.images)
    assert torch.equal(again.test.labels, data.test.labels)
    # A non-contiguous array and a read-only one are taken as well.
    flipped = arrays[0][:, ::-1]
    flipped.flags.writeable = False
    taken = cnnlab.datasets.from_tensors(flipped, *arrays[1:], mean=(0.5,) * 3, std=(0.25,) * 3)
    assert torch.equal(taken.train.images, data.train.images.flip(1))
    with pytest.raises(UserError, match="training labels must be int64"):
        cnnlab.datasets.from_tensors(arrays[0], arrays[1].astype(np.int32), *arrays[2:],
                                     mean=(0.5,) * 3, std=(0.25,) * 3)  # fmt: skip


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 10))  # fmt: skip


def test_a_trainer_says_its_epochs_and_numerics(capsys):
    settings = {"epochs": 2, "batch_size": 32, "device": "cpu", "precision": "fp32",
                "channels_last": False}  # fmt: skip
    cnnlab.Trainer(_net(), tiny_rgb_data(), **settings).fit()
    out = capsys.readouterr().out
    assert "numerics: fp32 on cpu" in out
    assert "epoch 1/2" in out and "epoch 2/2" in out and "test loss" in out
    cnnlab.Trainer(_net(), tiny_rgb_data(), progress=False, **settings).fit()
    assert capsys.readouterr().out == ""


@needs_fashion
def test_train_prints_and_a_run_folder_names_its_model(tmp_path, capsys):
    run = tmp_path / "run"
    auto = ["train.epochs=1", "train.precision=auto", "train.channels_last=auto"]
    cnnlab.train(overrides=[*TINY_CPU, *auto], out=run)
    out = capsys.readouterr().out
    assert "epoch 1/1" in out
    assert "(chosen by train.precision/channels_last=auto; measured images/s: fp32 " in out

    # eval, predict and export read a run folder's last.pt.
    assert load_trained_model(run).path == run / "last.pt"
    assert cli("eval", str(run), "--limit", "50", "--batch-size", "25") == 0
    limited = capsys.readouterr().out
    assert "fashion_mnist test (50 images" in limited
    assert cli("eval", str(run / "last.pt"), "--limit", "50") == 0
    assert capsys.readouterr().out == limited  # the batch size does not change the figures

    (run / "last.pt").rename(run / "kept.pt")
    assert cli("eval", str(run)) == 2
    assert f"run folder {run} has no last.pt yet" in _error_line(capsys)
    assert cli("eval", str(tmp_path)) == 2
    assert f"{tmp_path} is a folder but not a run folder" in _error_line(capsys)
    assert cli("eval", str(run / "kept.pt"), "--limit", "0") == 2
    assert "--limit must be at least 1, got 0" in _error_line(capsys)


@pytest.mark.parametrize(
    "content, says",
    [
        (b"not a checkpoint at all", "it is not a PyTorch checkpoint, or it is damaged"),
        ({"model": {}, "x": np.arange(3)}, "it holds a Python object (numpy."),
    ],
    ids=["garbage", "pickled-object"],
)
def test_an_unreadable_checkpoint_says_why_without_torch_advice(tmp_path, capsys, content, says):
    bad = tmp_path / "bad.pt"
    if isinstance(content, bytes):
        bad.write_bytes(content)
    else:
        torch.save(content, bad)
    assert cli("eval", str(bad)) == 2
    line = _error_line(capsys)
    assert f"checkpoint {bad} cannot be read: {says}" in line
    assert "weights_only=False" not in line and "Re-running" not in line
