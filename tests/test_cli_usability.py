"""What a newcomer meets first on the command line: overrides in any order, --version, every
command's --help with an example, the resolved config, the shipped recipes, and shipped recipe
names that work from any folder."""

from __future__ import annotations

import pytest
import yaml

import cnnlab
from cnnlab.cli import build_parser
from cnnlab.config import RECIPES_DIR
from cnnlab.experiments.recipe_index import shipped_recipes
from tests.helpers import cli


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


@pytest.fixture
def wide(monkeypatch):
    # rich wraps table cells to the terminal; a wide one keeps each cell on one line.
    monkeypatch.setenv("COLUMNS", "400")


@pytest.mark.parametrize(
    "argv, overrides",
    [
        (["train", "--out", "runs/x", "data.train_limit=512"], ["data.train_limit=512"]),
        (["train", "a=1", "--out", "runs/x", "b=2"], ["a=1", "b=2"]),
        (["tune", "RECIPE", "--trials", "3", "train.epochs=1"], ["train.epochs=1"]),
        (["sweep", "RECIPE", "--seeds", "2", "a=1", "--grid", "c=1,2", "b=2"], ["a=1", "b=2"]),
        (["schedule", "RECIPE", "--out", "lr.png", "train.epochs=2"], ["train.epochs=2"]),
    ],
)
def test_overrides_may_follow_options(argv, overrides):
    args = build_parser().parse_args(argv)
    assert args.overrides == overrides
    assert getattr(args, "recipe", None) is None or str(args.recipe) == "RECIPE"


def test_version(capsys):
    with pytest.raises(SystemExit) as done:
        cli("--version")
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"cnnlab {cnnlab.__version__}"


def _commands() -> dict:
    parser = build_parser()
    return next(a for a in parser._actions if a.dest == "command").choices


@pytest.mark.parametrize("name", sorted(_commands()))
def test_every_command_help_says_what_it_does_with_an_example(name):
    sub = _commands()[name]
    text = sub.format_help()
    assert sub.description and len(sub.description) > 40, name
    assert "examples:" in text and f"  cnnlab {name}" in text.split("examples:")[1]


def test_print_config_shows_the_resolved_config_and_trains_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--config", "recipes/cifar10/resnet20.yaml", "--out", str(out),
            "--print-config", "train.epochs_scale=0.1", "data.train_limit=512"]  # fmt: skip
    assert cli(*argv) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["model"]["name"] == "resnet20" and cfg["data"]["train_limit"] == 512
    assert cfg["train"]["epochs"] == 20 and cfg["schedule"]["milestones"] == [8, 12]
    assert cfg["optim"]["momentum"] == 0.9  # defaults are filled in
    assert not out.exists()


def test_recipes_lists_the_shipped_recipes_with_their_published_rows(capsys, wide):
    assert cli("recipes", "cifar10/resnet20") == 0
    text = capsys.readouterr().out
    assert "recipes/cifar10/resnet20.yaml" in text and "8.29 %" in text
    assert "gcr/torch-residual-networks@f0d0a17 README.md" in text
    assert "recipes/cifar10/resnet20_adadelta.yaml" not in text
    rows = shipped_recipes("*resnet20*")
    assert {r.name for r in rows} >= {"recipes/cifar10/resnet20.yaml"}
    assert all("resnet20" in r.name for r in rows)
    assert len(shipped_recipes()) == len(list(RECIPES_DIR.rglob("*.yaml")))


def test_recipes_with_no_match_is_one_line(capsys):
    assert cli("recipes", "nothing-like-this*") == 2
    assert "no shipped recipe matches 'nothing-like-this*'" in _error_line(capsys)


def test_sweep_and_tune_find_shipped_recipes_from_any_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    # Each stops at a check made after the recipe is read: the recipe was found.
    assert cli("sweep", "recipes/default.yaml", "--workers", "0") == 2
    assert "--workers must be at least 1" in _error_line(capsys)
    tune = ["tune", "recipes/default.yaml", "--param", "optim.lr=log:0.01:0.5"]
    assert cli(*tune, "--trials", "3", "train.bogus=1") == 2
    assert "unknown config key 'train.bogus'" in _error_line(capsys)
    assert list(tmp_path.iterdir()) == []


def test_tune_show_of_a_missing_study_creates_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli("tune", "--show", "--study", "nope") == 2
    assert "no study 'nope'" in _error_line(capsys)
    assert list(tmp_path.iterdir()) == []
