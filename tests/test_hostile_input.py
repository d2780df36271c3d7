"""Hostile input: damaged checkpoints, a checkpoint of another model, a newer format, an edited
config.yaml, a full disk or an I/O error while saving, odd and malicious image files. Each is
one clear line on stderr and exit 2, and nothing that existed is changed."""

import errno
import os
import re
import shutil

import pytest
import torch

from cnnlab.engine import checkpoint
from cnnlab.engine.checkpoint import load_checkpoint
from cnnlab.errors import UserError
from cnnlab.run.training import train
from tests.folder_helpers import make_image_folder
from tests.helpers import FASHION, TINY_CPU, cli, files_below, needs_fashion, read_metrics

pytestmark = needs_fashion


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 2-epoch run (shared; each test works on a copy)."""
    run = tmp_path_factory.mktemp("hostile") / "run"
    assert cli("train", "--out", str(run), *TINY_CPU) == 0
    return run


@pytest.fixture
def run(tmp_path, finished):
    """A copy of the finished run with its summary removed, so that it looks resumable."""
    copy = tmp_path / "run"
    shutil.copytree(finished, copy)
    (copy / "summary.json").unlink()
    return copy


def refused(capsys, *args) -> str:
    """Run `cnnlab ARGS`, assert exit 2 with one line on stderr, return that line."""
    capsys.readouterr()
    assert cli(*args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def _truncated_fashion(folder):
    # Fashion-MNIST with its training images cut short, as an interrupted copy leaves them.
    folder.mkdir()
    for source in FASHION.glob("*.gz"):
        data = source.read_bytes()
        (folder / source.name).write_bytes(data[:1000] if "train-images" in source.name else data)
    return folder


@pytest.mark.parametrize(
    "bad, says",
    [
        (lambda tmp: ["model.name=wrn16_4", "model.dropout=1.5"], "dropout must lie in [0, 1)"),
        (lambda tmp: [f"data.root={_truncated_fashion(tmp / 'fm')}"], "the file ends early"),
        (lambda tmp: ["data.name=folder", f"data.root={tmp / 'none'}"], "is not a folder"),
    ],
    ids=["model-option-out-of-range", "truncated-data-file", "missing-image-folder"],
)
def test_a_bad_model_option_or_dataset_is_refused_before_a_run_folder_is_made(
    tmp_path, capsys, bad, says
):
    args = [*TINY_CPU, *bad(tmp_path)]
    assert says in refused(capsys, "train", "--out", str(tmp_path / "run"), *args)
    with pytest.raises(UserError, match=re.escape(says)):  # the Python API too
        train(overrides=args, out=tmp_path / "api-run")
    assert not (tmp_path / "run").exists() and not (tmp_path / "api-run").exists()


def test_an_existing_out_is_refused_before_the_data_is_read(tmp_path, capsys):
    # The folder check comes first: the truncated data file would be named otherwise.
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("keep me")
    args = [*TINY_CPU, f"data.root={_truncated_fashion(tmp_path / 'fm')}"]
    assert "already exists" in refused(capsys, "train", "--out", str(run), *args)
    with pytest.raises(UserError, match="already exists"):
        train(overrides=args, out=run)
    assert [p.name for p in run.iterdir()] == ["notes.txt"]


@pytest.mark.parametrize(
    "damage, says",
    [
        (lambda data: b"", "is empty (0 bytes)"),
        (lambda data: data[: len(data) // 2], "cannot be read"),
        (lambda data: bytes(b ^ 0x5A for b in data[:4096]) + data[4096:], "cannot be read"),
    ],
    ids=["zero-byte", "truncated", "corrupt"],
)
def test_a_damaged_last_pt_with_a_stray_temp_file_is_refused_and_nothing_changes(
    run, capsys, damage, says
):
    last = run / "last.pt"
    last.write_bytes(damage(last.read_bytes()))
    (run / "last.pt.tmp").write_bytes(b"half a checkpoint")
    before = files_below(run)
    err = refused(capsys, "train", "--resume", str(run))
    assert f"checkpoint {last} {says}" in err
    assert "last.pt.tmp beside it is an interrupted write and is not used" in err
    assert files_below(run) == before


def test_a_checkpoint_of_a_newer_format_is_refused_by_resume_and_eval(run, capsys):
    state = load_checkpoint(run / "last.pt")
    torch.save({**state, "format": checkpoint.CHECKPOINT_FORMAT + 1}, run / "last.pt")
    before = files_below(run)
    for args in (("train", "--resume", str(run)), ("eval", str(run / "last.pt"))):
        err = refused(capsys, *args)
        assert f"has format {checkpoint.CHECKPOINT_FORMAT + 1}, newer than this cnnlab" in err
    assert files_below(run) == before


def test_eval_of_a_checkpoint_for_another_model_or_class_count_names_the_misfit(
    run, tmp_path, capsys
):
    state = load_checkpoint(run / "last.pt")
    state["config"]["model"] = {"name": "resnet20"}
    torch.save(state, tmp_path / "other_model.pt")
    err = refused(capsys, "eval", str(tmp_path / "other_model.pt"))
    assert "the weights do not fit resnet20 for fashion_mnist" in err
    assert "in the checkpoint but" in err
    images = make_image_folder(tmp_path / "images", per_class=2, val_per_class=1, corrupt=False)
    err = refused(capsys, "eval", str(run / "last.pt"), "--data", "folder", "--data-root",
                  str(images))  # fmt: skip
    assert "(3 channels, 3 classes)" in err and "in the checkpoint but" in err


def test_an_edited_config_is_refused_naming_the_keys_and_epochs_extend_explicitly(run, capsys):
    config = run / "config.yaml"
    original = config.read_text()
    config.write_text(original.replace("epochs: 2", "epochs: 3").replace("lr: 0.4", "lr: 0.2"))
    before = files_below(run)
    err = refused(capsys, "train", "--resume", str(run))
    assert "train.epochs: 2 -> 3" in err and "optim.lr: 0.4 -> 0.2" in err
    assert files_below(run) == before
    # Only the length differs: the message names the explicit way.
    config.write_text(original.replace("epochs: 2", "epochs: 3"))
    assert "use --extend-epochs 3" in refused(capsys, "train", "--resume", str(run))
    config.write_text(original)
    assert "already 2 epochs long" in refused(
        capsys, "train", "--resume", str(run), "--extend-epochs", "2"
    )
    assert cli("train", "--resume", str(run), "--extend-epochs", "3") == 0
    assert [r["epoch"] for r in read_metrics(run)] == [1, 2, 3]
    assert "epochs: 3" in config.read_text()
    assert "extended from 2 to 3 epochs; the LR schedule is" in (run / "log.txt").read_text()
    assert load_checkpoint(run / "last.pt")["config"]["train"]["epochs"] == 3


def _fail_second(real, exc: Exception, when=lambda *a: True):
    calls = []

    def fake(*args, **kwargs):
        if when(*args):
            calls.append(1)
            if len(calls) == 2:
                if args and hasattr(args[-1], "write"):
                    args[-1].write(b"partial")  # the bytes that fit before the disk filled
                raise exc
        return real(*args, **kwargs)

    return fake


def _is_last_tmp(fd, *_):
    return os.readlink(f"/proc/self/fd/{fd}").endswith("last.pt.tmp")


@pytest.mark.parametrize(
    "target, fake, says",
    [
        (
            (torch, "save"),
            _fail_second(torch.save, OSError(errno.ENOSPC, "No space left on device")),
            "No space left on device [ENOSPC]",
        ),
        (
            (os, "fsync"),
            _fail_second(os.fsync, OSError(errno.EIO, "Input/output error"), _is_last_tmp),
            "Input/output error [EIO]",
        ),
        (
            (torch, "save"),
            # What torch.save raises when the file's write fails under it.
            _fail_second(torch.save, RuntimeError("[enforce fail at inline_container.cc:672]")),
            "torch.save failed ([enforce fail at inline_container.cc:672]); ",
        ),
    ],
    ids=["ENOSPC-in-save", "EIO-in-fsync", "torch-writer-error"],
)
def test_a_failed_checkpoint_write_keeps_the_previous_one_and_says_what_happened(
    tmp_path, capsys, monkeypatch, target, fake, says
):
    monkeypatch.setattr(*target, fake)
    run = tmp_path / "run"
    err = refused(capsys, "train", "--out", str(run), *TINY_CPU)
    assert f"could not write {run / 'last.pt'}: {says}" in err
    assert "the previous last.pt is unchanged" in err
    assert load_checkpoint(run / "last.pt")["epoch"] == 1  # epoch 2's save failed
    assert not list(run.glob("*.tmp"))
    monkeypatch.undo()
    assert cli("train", "--resume", str(run)) == 0  # space freed: the run goes on
    assert [r["epoch"] for r in read_metrics(run)] == [1, 2]
