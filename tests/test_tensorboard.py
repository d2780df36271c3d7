"""TensorBoard event files are written beside the run's files when tensorboard is installed."""

import pytest

from tests.helpers import SMALL, cli, needs_fashion

pytestmark = needs_fashion


def test_a_run_writes_event_files_with_its_metrics(tmp_path):
    pytest.importorskip(
        "tensorboard", reason="tensorboard is an optional extra (make test installs it)"
    )
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    assert cli("train", "--out", str(run), *SMALL) == 0
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert {"train_loss", "test_error", "lr"} <= set(scalars)
    assert [e.step for e in events.Scalars("test_error")] == [1, 2]
