"""Bad input: one clear line, exit status 2, no traceback, and nothing existing overwritten."""

import gzip
import os
import shutil

import pytest

from cnnlab.engine.checkpoint import load_checkpoint
from tests.helpers import FASHION, SMALL, cli, cli_process, needs_fashion, read_metrics


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize(
    "override, expected",
    [
        ("model.name=preact_resnet21", "unknown model 'preact_resnet21' (did you mean"),
        ("model.widht=2", "has no option 'widht'"),
        ("train.epoch=3", "unknown config key 'train.epoch' (did you mean 'train.epochs'?)"),
        ("train.batch_size=big", "config key 'train.batch_size'"),
        ("optim.lr=0", "config key 'optim.lr': Input should be greater than 0"),
        ("data.name=imagenet", "data.name=imagenet reads an image folder: set data.root=DIR"),
        ("data.name=cifar11", "config key 'data.name': unknown dataset 'cifar11'"),
    ],
)
def test_bad_config_is_one_clear_line(tmp_path, capsys, override, expected):
    run = tmp_path / "run"
    assert cli("train", "--out", str(run), *SMALL, override) == 2
    assert expected in _error_line(capsys)


def test_an_existing_run_folder_is_never_overwritten(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("keep me")
    assert cli("train", "--out", str(run), *SMALL) == 2
    assert "already exists" in _error_line(capsys)
    assert [p.name for p in run.iterdir()] == ["notes.txt"]
    assert (run / "notes.txt").read_text() == "keep me"


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_an_unwritable_output_folder_is_reported(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    assert cli("train", "--out", str(locked / "run"), *SMALL) == 2
    assert "cannot write the run folder" in _error_line(capsys)


def test_an_output_path_that_is_a_file_is_reported(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert cli("train", "--out", str(blocker / "run"), *SMALL) == 2
    assert "cannot write the run folder" in _error_line(capsys)
    assert blocker.read_text() == "x"


def test_resume_of_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert cli("train", "--resume", str(tmp_path)) == 2
    assert "is not a run folder" in _error_line(capsys)


@needs_fashion
def test_a_truncated_dataset_file_is_named(tmp_path, capsys):
    root = tmp_path / "fm"
    shutil.copytree(FASHION, root)
    images = root / "train-images-idx3-ubyte.gz"
    raw = gzip.decompress(images.read_bytes())
    images.write_bytes(gzip.compress(raw[: len(raw) // 3]))
    assert cli("train", "--out", str(tmp_path / "run"), *SMALL, f"data.root={root}") == 2
    line = _error_line(capsys)
    assert "train-images-idx3-ubyte.gz" in line and "truncated" in line


def test_a_corrupt_checkpoint_is_named(tmp_path, capsys):
    bad = tmp_path / "last.pt"
    bad.write_bytes(b"not a checkpoint")
    assert cli("eval", str(bad)) == 2
    assert f"checkpoint {bad} cannot be read" in _error_line(capsys)


def test_debug_shows_the_traceback(tmp_path):
    done = cli_process("--debug", "train", "--out", str(tmp_path / "r"), "model.name=nope")
    assert done.returncode != 0 and "Traceback" in done.stderr


@needs_fashion
def test_nan_loss_stops_names_the_step_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    # Epoch 1 trains normally; the lr then jumps by 1e12 at the milestone and the loss explodes.
    args = [*SMALL, "schedule.name=multistep", "schedule.peak_epoch=null",
            "schedule.milestones=[1]", "schedule.gamma=1e12"]  # fmt: skip
    assert cli("train", "--out", str(run), *args) == 2
    line = _error_line(capsys)
    assert "at step" in line and "(epoch 2)" in line and "last.pt" in line
    state = load_checkpoint(run / "last.pt")
    assert state["epoch"] == 1
    assert [r["epoch"] for r in read_metrics(run)] == [1]
    assert "error: loss became" in (run / "log.txt").read_text()
