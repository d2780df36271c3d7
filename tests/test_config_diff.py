"""config_differences names every dotted key whose value differs between two configs."""

from cnnlab.config import load_config
from cnnlab.config_diff import config_differences, differing_keys


def test_equal_configs_have_no_differences_and_each_edit_is_named_with_both_values():
    base = load_config(None, ["train.epochs=3"])
    assert config_differences(base, load_config(None, ["train.epochs=3"])) == []
    edited = load_config(None, ["train.epochs=4", "optim.lr=0.2", "model.base_width=8"])
    assert config_differences(base, edited) == [
        "model.base_width: None -> 8",
        "optim.lr: 0.4 -> 0.2",
        "train.epochs: 3 -> 4",
    ]
    assert differing_keys(base, edited) == ["model.base_width", "optim.lr", "train.epochs"]


def test_list_and_nested_values_compare_whole():
    a = load_config(None, ["schedule.name=multistep", "schedule.milestones=[1, 2]"])
    b = load_config(None, ["schedule.name=multistep", "schedule.milestones=[1, 3]"])
    assert config_differences(a, b) == ["schedule.milestones: [1, 2] -> [1, 3]"]
