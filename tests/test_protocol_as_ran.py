"""Protocols as official code ran them: a crop larger than the image, a random test-time view,
and the classifier's init (hysts' Fashion-MNIST loader and models at 19a0ac6)."""

import math

import pytest
import torch
import yaml

import cnnlab
from cnnlab.config import RECIPES_DIR, AugmentConfig
from cnnlab.data.augment import BatchAugment, crop_flip, random_view
from cnnlab.errors import UserError
from tests.helpers import TINY_CPU, cli, needs_fashion, read_metrics


def test_a_crop_larger_than_the_image_is_a_window_of_the_zero_padded_image():
    # torchvision's RandomCrop(32, padding=4) on a 28x28 image: the 36x36 padded image, a 32x32
    # window at offsets 0..4; scaled down here to 6x6 images, padding 2, crop 8.
    imgs = torch.randint(1, 255, (64, 6, 6, 1), dtype=torch.uint8)
    out = crop_flip(imgs, 2, False, torch.Generator().manual_seed(0), size=8)
    padded = torch.nn.functional.pad(imgs, (0, 0, 2, 2, 2, 2))
    assert out.shape == (64, 8, 8, 1)
    offsets = set()
    for i in range(len(imgs)):
        found = [(dy, dx) for dy in range(3) for dx in range(3)
                 if torch.equal(out[i], padded[i, dy : dy + 8, dx : dx + 8])]  # fmt: skip
        assert found, f"image {i} is not an 8x8 window of its padded copy"
        offsets.update(found)
    assert offsets == {(dy, dx) for dy in range(3) for dx in range(3)}  # every offset is drawn


def test_the_image_sized_crop_draws_what_it_drew_before_crop_size_existed():
    imgs = torch.randint(0, 255, (32, 28, 28, 1), dtype=torch.uint8)
    a = crop_flip(imgs, 4, True, torch.Generator().manual_seed(5))
    b = crop_flip(imgs, 4, True, torch.Generator().manual_seed(5), size=28)
    assert torch.equal(a, b)


def test_a_crop_that_does_not_fit_is_refused_in_one_line():
    with pytest.raises(UserError) as err:
        BatchAugment.from_config(AugmentConfig(crop_padding=4, crop_size=37), (0.5,), (28, 28))
    assert "augment.crop_size=37" in str(err.value) and "at most 36" in str(err.value)
    assert "\n" not in str(err.value)


def test_the_random_view_depends_on_the_seed_only():
    imgs = torch.randint(0, 255, (50, 28, 28, 1), dtype=torch.uint8)
    a, b = random_view(imgs, 32, 4, True, seed=1), random_view(imgs, 32, 4, True, seed=1)
    assert a.shape == (50, 32, 32, 1) and torch.equal(a, b)
    assert not torch.equal(a, random_view(imgs, 32, 4, True, seed=2))


def test_classifier_init_policies():
    torch.manual_seed(0)
    hysts = cnnlab.build_model("preact_resnet20", classifier_init="default_zero_bias")
    bound = 1 / math.sqrt(hysts.fc.in_features)  # nn.Linear's U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert hysts.fc.weight.abs().max() <= bound and hysts.fc.weight.abs().max() > 0.9 * bound
    assert not hysts.fc.bias.any()
    default = cnnlab.build_model("preact_resnet20", classifier_init="default")
    assert default.fc.bias.abs().max() <= bound and default.fc.bias.any()
    kaiming = cnnlab.build_model("preact_resnet20")  # N(0, 2/fan_out): std 0.45 for 10 outputs
    assert kaiming.fc.weight.std() > 3 * bound and not kaiming.fc.bias.any()
    with pytest.raises(UserError, match="classifier_init must be one of"):
        cnnlab.build_model("preact_resnet20", classifier_init="xavier")


@needs_fashion
def test_a_random_test_view_is_reported_beside_the_plain_test_error(tmp_path):
    view = ["eval.random_crop_size=32", "eval.random_crop_padding=4", "eval.random_flip=true",
            "augment.crop_size=32", "augment.crop_padding=4"]  # fmt: skip
    assert cli("train", "--out", str(tmp_path / "a"), *TINY_CPU, *view) == 0
    rows = read_metrics(tmp_path / "a")
    assert all("test_plain_error" in r and "test_error" in r for r in rows)
    assert rows[-1]["test_error"] != rows[-1]["test_plain_error"]
    # The view is drawn from train.seed: a second run of the same config sees the same images.
    assert cli("train", "--out", str(tmp_path / "b"), *TINY_CPU, *view) == 0
    again = read_metrics(tmp_path / "b")
    assert [r["test_error"] for r in rows] == [r["test_error"] for r in again]
    plain = tmp_path / "plain"
    assert cli("train", "--out", str(plain), *TINY_CPU, "augment.crop_size=30") == 0
    assert "test_plain_error" not in read_metrics(plain)[-1]


def _recipe(name: str) -> dict:
    return yaml.safe_load((RECIPES_DIR / "fashion_mnist" / f"{name}.yaml").read_text())


@pytest.mark.parametrize(
    "name, crop",
    [("preact_resnet20", 32), ("preact_resnet20_mixup", 32), ("preact_resnet20_cutout12", None),
     ("preact_resnet20_random_erasing", None), ("shake_shake26_2x32d_cutout12", None)],
)  # fmt: skip
def test_hysts_fashion_recipes_follow_the_loader_as_it_ran(name, crop):
    raw = _recipe(name)
    assert raw["augment"].get("crop_size") == crop  # 32x32 crops only where no Cutout/Erasing
    assert raw["eval"] == {"random_crop_size": 32, "random_crop_padding": 4, "random_flip": True}
    assert raw["model"]["classifier_init"] == "default_zero_bias"
    assert (
        "19a0ac6" in raw["reference"]["source"]
        and "as the code ran" in raw["reference"]["protocol"]
    )


def test_the_readme_protocol_keeps_its_own_recipe():
    raw = _recipe("preact_resnet20_readme_protocol")
    assert "crop_size" not in raw["augment"] and "eval" not in raw
    assert raw["reference"]["value"] == _recipe("preact_resnet20")["reference"]["value"]
