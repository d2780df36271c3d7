"""`cnnlab report` beside a reference: its protocol, and for best-over-epochs rows the run's best
test epoch, labelled as the paper's protocol (the table's own figures stay last epoch)."""

from __future__ import annotations

from pathlib import Path

from cnnlab.experiments.report import Group, markdown_table, summarize
from cnnlab.experiments.runs import RunRecord

BEST_LABEL = "best test epoch, paper's protocol (comparison only)"


def _group(selection: str, tmp_path: Path) -> Group:
    reference = {"value": 12.5, "source": "z-hXu/ReCU README", "row": "resnet20_1w1a",
                 "protocol": "best test accuracy over epochs", "selection": selection}  # fmt: skip
    runs = []
    for seed, errors in ((0, [30.0, 20.0, 25.0]), (1, [28.0, 22.0, 24.0])):
        history = [{"epoch": e + 1, "test_error": err} for e, err in enumerate(errors)]
        config = {"name": "r", "train": {"seed": seed}, "reference": reference}
        summary = {"final": {"test_error": errors[-1]}, "best": {"epoch": 3}}
        runs.append(RunRecord(tmp_path / str(seed), "finished", "", config, summary, history))
    return Group({"name": "r"}, runs, label="r")


def test_best_over_epochs_rows_show_the_best_test_epoch_beside_the_reference(tmp_path):
    row = summarize(_group("best_over_epochs", tmp_path))
    assert row["test_error_median"] == 24.5  # cnnlab's protocol: the last epoch
    assert row["test_error_best_test_epoch_median"] == 21.0  # median of the runs' best (20, 22)
    table = markdown_table([row])
    assert BEST_LABEL in table and "| 21.00 |" in table
    assert "12.5 (best test accuracy over epochs)" in table  # the protocol beside the value


def test_last_epoch_rows_show_no_best_epoch_column(tmp_path):
    row = summarize(_group("last_epoch", tmp_path))
    assert row["test_error_best_test_epoch_median"] is None
    assert BEST_LABEL not in markdown_table([row])
