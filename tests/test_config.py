"""The config schema: overrides, round trips, and errors that name the key."""

import pytest

from cnnlab.config import DEFAULT_RECIPE, dump_config, load_config, validate
from cnnlab.errors import UserError


def test_default_recipe_is_preact_resnet20_on_fashion_mnist():
    cfg = load_config()
    assert cfg.name == "default"
    assert cfg.model.name == "preact_resnet20"
    assert cfg.data.name == "fashion_mnist"
    assert DEFAULT_RECIPE.name == "default.yaml"


def test_dotted_overrides_are_typed():
    cfg = load_config(None, ["train.epochs=3", "schedule.milestones=[1,2]", "optim.lr=0.05",
                             "optim.nesterov=false", "model.widen=2", "data.root=/x"])  # fmt: skip
    assert cfg.train.epochs == 3
    assert cfg.schedule.milestones == [1, 2]
    assert cfg.optim.lr == 0.05 and cfg.optim.nesterov is False
    assert cfg.model.options() == {"widen": 2}
    assert cfg.data.root == "/x"


def test_dump_then_load_gives_the_same_config(tmp_path):
    cfg = load_config(None, ["train.epochs=2", "model.se=true", "data.val_size=100"])
    path = tmp_path / "config.yaml"
    path.write_text(dump_config(cfg))
    assert load_config(path) == cfg


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.epoch=3", "unknown config key 'train.epoch' (did you mean 'train.epochs'?)"),
        ("trian.epochs=3", "unknown config key 'trian'"),
        ("train.epochs=abc", "config key 'train.epochs': Input should be a valid integer"),
        ("train.epochs=0", "config key 'train.epochs': Input should be greater than or equal to 1"),
        ("optim.lr=-1", "config key 'optim.lr': Input should be greater than 0 (got -1)"),
        ("optim.momentum=1.5", "config key 'optim.momentum'"),
        ("data.name=cifar", "config key 'data.name'"),
        ("schedule.milestones=[9]", "schedule.milestones: 9 lies outside 1..train.epochs (3)"),
        ("train.precision=fp8", "config key 'train.precision'"),
        ("no_equals_sign", "is not of the form key=value"),
    ],
)
def test_bad_values_name_the_key(override, message):
    with pytest.raises(UserError) as err:
        load_config(None, [override])
    assert message in str(err.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(UserError, match="must hold a mapping"):
        load_config(listy)


def test_nesterov_without_momentum_is_rejected():
    with pytest.raises(UserError, match="nesterov"):
        validate({"optim": {"momentum": 0, "nesterov": True}})
