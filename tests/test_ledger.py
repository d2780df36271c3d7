"""Every reference recipe matches its row of docs/reproduction.yaml, so no protocol drifts unseen.

The ledger states, per published row, the schedule (kind, milestones), the optimizer and its
settings, the network (model and options, its init among them) with its measured parameter
count, epochs, batch, the train and test transforms, normalisation and ragged batches.
A deliberate recipe change re-runs `python scripts/reproduction_ledger.py` and commits both.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml

from cnnlab.config import RECIPES_DIR, load_config

ROOT = Path(__file__).resolve().parent.parent
LEDGER = yaml.safe_load((ROOT / "docs" / "reproduction.yaml").read_text())["rows"]
BY_RECIPE = {row["recipe"]: row for row in LEDGER}


def _ledger_module():
    spec = importlib.util.spec_from_file_location(
        "ledger", ROOT / "scripts" / "reproduction_ledger.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ledger = _ledger_module()
RECIPES = [str(p.relative_to(RECIPES_DIR)) for p in ledger.reference_recipes()]


def test_the_ledger_has_one_row_per_reference_recipe():
    assert sorted(BY_RECIPE) == sorted(RECIPES)
    assert len(BY_RECIPE) == len(LEDGER)


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_matches_its_ledger_row(recipe):
    row, path = BY_RECIPE[recipe], RECIPES_DIR / recipe
    expected = ledger.protocol_of(path)
    for key in ("network", "optimizer", "schedule", "epochs", "batch", "train_transform",
                "test_transform", "loader"):  # fmt: skip
        assert expected[key] == row[key], f"{recipe}: {key} differs from docs/reproduction.yaml"
    assert ledger.measured_params(path) == row["params"]
    ref = load_config(path).reference
    assert row["verified"] == sorted(ref.settings) and row["unconfirmed"] == list(ref.unconfirmed)
    if not row["protocol"].startswith("unverified"):
        assert row["verified"], f"{recipe}: no setting is traced to its source"


@pytest.mark.parametrize("recipe", RECIPES)
def test_status_claims_no_more_than_its_evidence(recipe):
    row = BY_RECIPE[recipe]
    assert row["status"] in ledger.STATUSES
    if row["status"] != "not run on this hardware":
        # A run claimed is a run shown: the command and the figure it gave.
        assert row["evidence"] and "cnnlab " in row["evidence"] and "%" in row["evidence"]


def test_the_page_is_the_ledger_rendered():
    assert (ROOT / "docs" / "reproduction.md").read_text() == ledger.render_page(LEDGER)
