"""`cnnlab report`: tables that match the run folders, their protocol, damaged folders, pictures."""

import csv
import io
import json
import shutil
import statistics

import pytest
import yaml

from tests.helpers import cli, needs_fashion, read_metrics
from tests.sweep_helpers import shared_sweep

pytestmark = needs_fashion


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    return shared_sweep(tmp_path_factory)


def _csv(capsys, *args):
    capsys.readouterr()
    assert cli("report", *args, "--format", "csv") == 0
    return list(csv.DictReader(io.StringIO(capsys.readouterr().out)))


def test_the_table_has_one_row_per_grid_point_with_the_run_folders_statistics(sweep, capsys):
    rows = _csv(capsys, str(sweep))
    assert [r["config"] for r in rows] == ["optim.lr=0.05", "optim.lr=0.1"]
    for row, lr in zip(rows, ("0.05", "0.1")):
        errors, top5 = [], []
        for seed in (0, 1):
            run = sweep / f"optim.lr={lr}" / f"seed{seed}"
            summary = json.loads((run / "summary.json").read_text())
            assert summary["final"]["test_error"] == read_metrics(run)[-1]["test_error"]
            errors.append(read_metrics(run)[-1]["test_error"])
            top5.append(summary["final"]["test_top5_error"])
        assert row["n"] == "2" and row["seeds"] == "0,1"
        assert float(row["test_error_median"]) == pytest.approx(statistics.median(errors))
        assert float(row["test_error_mean"]) == pytest.approx(statistics.mean(errors))
        assert float(row["test_error_std"]) == pytest.approx(statistics.stdev(errors))
        assert float(row["test_error_min"]) == min(errors)
        assert float(row["test_error_max"]) == max(errors)
        assert float(row["test_top5_error_median"]) == pytest.approx(statistics.median(top5))
        assert int(float(row["params"])) == summary["params"]
        assert row["protocol"] == "error at last epoch; statistic over 2 seeds; " + (
            "best checkpoint chosen on none — last epoch"
        )
        assert f"optim.lr={lr} --seed-list 0,1" in row["command"]
        # The last epoch's dead-unit probes, as a median percentage over the seeds.
        dead = [100 * read_metrics(sweep / f"optim.lr={lr}/seed{s}")[-1]["probe_dead_bn"]
                for s in (0, 1)]  # fmt: skip
        assert float(row["probe_dead_bn_median"]) == pytest.approx(statistics.median(dead))

    capsys.readouterr()
    assert cli("report", str(sweep)) == 0
    out = capsys.readouterr().out
    assert "at last epoch; statistic over 2 seeds" in out
    assert "best checkpoint chosen on none — last epoch" in out
    median = statistics.median(
        read_metrics(sweep / "optim.lr=0.1/seed0")[-1:][0:1][0:1]
        and [read_metrics(sweep / f"optim.lr=0.1/seed{s}")[-1]["test_error"] for s in (0, 1)]
    )
    assert f"| optim.lr=0.1 | 2 | {median:.2f} |" in out
    assert "dead_relu % (median)" in out and "dead_bn % (median)" in out


def test_damaged_and_unfinished_run_folders_are_listed_not_crashed_on(sweep, tmp_path, capsys):
    good = sweep / "optim.lr=0.05/seed0"
    damaged = tmp_path / "damaged"
    for name in ("truncated", "garbage", "no_config", "unfinished", "half_config"):
        shutil.copytree(good, damaged / name)
    metrics = damaged / "truncated/metrics.jsonl"
    metrics.write_text(metrics.read_text()[:-40])
    (damaged / "garbage/summary.json").write_text("\x00\x13 not json {")
    (damaged / "no_config/config.yaml").unlink()
    (damaged / "unfinished/summary.json").unlink()
    (damaged / "half_config/summary.json").unlink()
    (damaged / "half_config/config.yaml").write_text("")
    (damaged / "only_a_log").mkdir()
    (damaged / "only_a_log/error.txt").write_text("")

    capsys.readouterr()
    assert cli("report", str(sweep), str(damaged)) == 0
    out = capsys.readouterr().out
    lines = {
        line.split(" | ")[0].split("/")[-1]: line for line in out.splitlines() if "damaged" in line
    }
    assert "corrupt" in lines["truncated"] and "metrics.jsonl line 2" in lines["truncated"]
    assert "corrupt" in lines["garbage"] and "summary.json is not valid JSON" in lines["garbage"]
    assert "corrupt" in lines["no_config"] and "no config.yaml" in lines["no_config"]
    assert "unfinished" in lines["unfinished"] and "2/2 epochs" in lines["unfinished"]
    assert "corrupt" in lines["half_config"] and "config.yaml is empty" in lines["half_config"]
    assert "failed" in lines["only_a_log"]
    # The table keeps only finished runs; the unfinished copy is counted beside its row.
    assert "| optim.lr=0.05 | 2 |" in out and "| optim.lr=0.1 | 2 |" in out
    assert "not finished" in out


def test_plot_and_results_page(sweep, tmp_path, capsys):
    page, picture = tmp_path / "site/results.md", tmp_path / "site/img/curves.png"
    assert cli("report", str(sweep), "--plot", str(picture), "--markdown", str(page)) == 0
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = page.read_text()
    assert "statistic over 2 seeds" in text and "| optim.lr=0.05 | 2 |" in text
    assert "![test error and train loss per epoch](img/curves.png)" in text
    assert text.count("`cnnlab sweep ") == 2 and "optim.lr=0.1 --seed-list 0,1`" in text


def test_reference_values_by_keys_and_plain_train_runs(sweep, tmp_path, capsys):
    plain = tmp_path / "plain"
    errors = []
    for seed in (0, 1):
        run = shutil.copytree(sweep / f"optim.lr=0.05/seed{seed}", plain / f"run{seed}")
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        cfg["reference"] = {"value": 5.14, "source": "REFERENCES.md 1", "protocol": "med3",
                            "row": "ResNet-preact-20"}  # fmt: skip
        (run / "config.yaml").write_text(yaml.safe_dump(cfg))
        errors.append(read_metrics(run)[-1]["test_error"])
    [row] = _csv(capsys, str(plain))
    assert float(row["reference"]) == 5.14 and row["reference_source"] == "REFERENCES.md 1"
    assert float(row["median_minus_reference"]) == pytest.approx(statistics.median(errors) - 5.14)
    assert row["command"].startswith("cnnlab sweep ") and row["command"].endswith("--seed-list 0,1")
    capsys.readouterr()
    assert cli("report", str(plain / "run0")) == 0
    out = capsys.readouterr().out
    assert "5.14 (med3)" in out and "REFERENCES.md 1, ResNet-preact-20" in out

    # A sweep that overrides its recipe is flagged: the reference's protocol is not what ran.
    copy = shutil.copytree(sweep, tmp_path / "copy")
    for config in copy.glob("*/seed*/config.yaml"):
        cfg = yaml.safe_load(config.read_text())
        config.write_text(yaml.safe_dump({**cfg, "reference": {"value": 5.0, "source": "x"}}))
    rows = _csv(capsys, str(copy))
    assert all("train.epochs" in r["reference_caveat"] for r in rows)
    assert "optim.lr" in rows[0]["reference_caveat"]

    [row] = _csv(capsys, str(sweep), "--by", "model.name")
    assert row["config"] == "model.name=preact_resnet20" and row["n"] == "4"
    assert "statistic over 4 seeds" not in row["protocol"]  # seeds 0,1 twice: 4 runs, 2 seeds
    capsys.readouterr()
    assert cli("report", str(sweep), "--by", "optim.lrr") == 2
    assert "did you mean 'optim.lr'" in capsys.readouterr().err
