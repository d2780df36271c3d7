"""PatchShuffle on feature maps: stage ends per family, training only, a resumable stream."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from cnnlab.config import AugmentConfig, load_config
from cnnlab.data.augment import BatchAugment
from cnnlab.engine.checkpoint import load_checkpoint
from cnnlab.errors import UserError
from cnnlab.methods.patch_shuffle_features import FeaturePatchShuffle, shuffle_feature_map
from cnnlab.models.stages import stage_outputs
from cnnlab.registry import build_model
from tests.helpers import SMALL, cli, needs_fashion

torch.set_num_threads(1)


def fake_trainer(model: torch.nn.Module, shape=(3, 32, 32), name="preact_resnet20"):
    """The few trainer attributes the method reads."""
    return SimpleNamespace(
        model=model, input_shape=shape, device=torch.device("cpu"),
        dist=SimpleNamespace(rank=0), cfg=SimpleNamespace(model=SimpleNamespace(name=name)),
    )  # fmt: skip


def test_stage_ends_are_the_last_block_of_each_stage():
    model = build_model("resnet20", base_width=4)
    assert stage_outputs(model, (3, 32, 32)) == [model.stages[2], model.stages[5], model.stages[8]]
    vgg = build_model("vgg15_bn")  # five conv groups, each ending at the ReLU before its pool
    assert len(stage_outputs(vgg, (3, 32, 32))) == 5


def test_shuffle_permutes_pixels_inside_each_patch_only():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    y = shuffle_feature_map(x, 2, 1.0, torch.Generator().manual_seed(0))
    assert not torch.equal(x, y)
    for i in (0, 2):
        for j in (0, 2):
            before = x[:, :, i : i + 2, j : j + 2].flatten(2).sort(-1).values
            after = y[:, :, i : i + 2, j : j + 2].flatten(2).sort(-1).values
            assert torch.equal(before, after)
    # A pixel moves with all its channels: channel c stays channel 0 plus a fixed offset.
    assert torch.equal(y[:, 1] - y[:, 0], x[:, 1] - x[:, 0])


def _method(mask, seed=0):
    cfg = AugmentConfig(patch_shuffle_prob=1.0, patch_shuffle_stages=mask)
    return FeaturePatchShuffle(cfg, seed)


def test_hooks_act_in_training_only_and_on_chosen_stages():
    torch.manual_seed(0)
    model = build_model("preact_resnet20", base_width=4)
    x = torch.randn(4, 3, 32, 32)
    model.train()
    plain = model(x)
    method = _method([0, 1, 0, 0])
    method.on_train_start(fake_trainer(model))
    assert len(method.handles) == 1
    assert not torch.allclose(model(x), plain)  # training: stage 1's output is shuffled
    model.eval()
    evaluated = model(x)
    for handle in method.handles:
        handle.remove()
    assert torch.equal(evaluated, model(x))  # evaluation: untouched


def test_the_stream_resumes_where_it_stopped():
    model = build_model("preact_resnet20", base_width=4).train()
    x = torch.randn(2, 3, 32, 32)
    first = _method([0, 1, 1, 1], seed=3)
    first.on_train_start(fake_trainer(model))
    model(x)  # one step's draws
    saved = first.state_dict()
    expected = model(x)
    for handle in first.handles:
        handle.remove()
    resumed = _method([0, 1, 1, 1], seed=3)
    resumed.load_state_dict(saved)
    resumed.on_train_start(fake_trainer(model))
    assert torch.equal(model(x), expected)


def test_mask_must_fit_the_family():
    model = build_model("resnet20", base_width=4)
    with pytest.raises(UserError, match="takes 4 \\(the input image first\\)"):
        _method([1, 1, 1]).on_train_start(fake_trainer(model, name="resnet20"))


def test_mask_config_rules():
    with pytest.raises(UserError, match="needs augment.patch_shuffle_prob > 0"):
        load_config(None, ["augment.patch_shuffle_stages=[0,1,0,0]"])
    cfg = load_config(
        None, ["augment.patch_shuffle_prob=0.1", "augment.patch_shuffle_stages=[0,1,0,0]"]
    )
    assert BatchAugment.from_config(cfg.augment, (0.5,), (28, 28)).patch_shuffle_prob == 0
    cfg = load_config(
        None, ["augment.patch_shuffle_prob=0.1", "augment.patch_shuffle_stages=[1,0,0,0]"]
    )
    assert BatchAugment.from_config(cfg.augment, (0.5,), (28, 28)).patch_shuffle_prob == 0.1


@needs_fashion
def test_a_run_with_shuffled_stages_trains_and_saves_its_stream(tmp_path):
    args = [*SMALL, "train.epochs=1", "data.train_limit=256", "probes.enabled=false"]
    shuffled = ["augment.patch_shuffle_prob=0.5", "augment.patch_shuffle_stages=[0,1,1,0]"]
    assert cli("train", "--out", str(tmp_path / "a"), *args, *shuffled) == 0
    assert cli("train", "--out", str(tmp_path / "b"), *args) == 0
    a, b = load_checkpoint(tmp_path / "a" / "last.pt"), load_checkpoint(tmp_path / "b" / "last.pt")
    assert "generator" in a["callbacks"]["patch_shuffle_features"]
    assert not all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
