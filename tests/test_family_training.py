"""Each model family trains on real Fashion-MNIST for a few hundred steps, at a small width."""

import pytest
import torch
import torch.nn.functional as F

from cnnlab.data.augment import BatchAugment
from cnnlab.data.loader import InMemoryLoader
from cnnlab.data.sources import load_split
from cnnlab.engine.numerics import Numerics
from cnnlab.registry import list_models, model_entry
from tests.helpers import IMAGENET_FAMILIES, needs_fashion, small_model

pytestmark = needs_fashion

# One variant per family (BN variants: a plain VGG is a poor smoke test). The ImageNet-size
# families keep their full channel widths, so they get smaller batches at 32x32.
REPRESENTATIVES = [
    "densenet_bc100_k12", "densenet121", "preact_resnet20", "pyramidnet110_a48", "resnet18",
    "resnet20", "resnext29_4x64d", "shake_shake26_2x32d", "vgg15_bn", "wrn16_4", "vgg16_nr",
    "speednet", "airbench94",
]  # fmt: skip
# Variants whose family is only checked to train without error here, with why; their
# forward/backward and parameter counts are checked in test_registry.py and test_zoo_*.py.
_BINARY = "1-bit nets leave chance slowly; resnet20_1w1a's learning is checked in test_recu.py"
SMOKE_ONLY = {
    # torchvision's init (three linear layers drawn from N(0, 0.01), dropout) keeps the full-width
    # ImageNet VGG at chance for far more steps than a smoke test can afford on a CPU.
    "vgg11_bn": "leaves chance only after far more steps than a smoke test has",
    "resnet20_1w1a": _BINARY,
    "resnet18_1w1a": _BINARY,
    "vgg_small_1w1a": _BINARY,
    "resnet18_1w1a_imagenet": _BINARY,
    "resnet18_1w1a_two_stage": _BINARY,
}


def test_every_family_is_trained_here():
    families = {model_entry(n).factory.__name__ for n in list_models()}
    learns = {model_entry(n).factory.__name__ for n in REPRESENTATIVES}
    smoke = {model_entry(n).factory.__name__ for n in SMOKE_ONLY}
    assert learns | smoke == families
    assert not learns & smoke


@pytest.fixture(scope="module")
def fashion():
    return load_split("fashion_mnist", "train")


def _train(name: str, fashion, steps: int) -> tuple[list[float], list[float]]:
    """Train the shrunk `name` for `steps` SGD steps; return per-step accuracy and loss."""
    torch.manual_seed(0)
    model = small_model(name, in_channels=1, num_classes=10)
    imagenet_size = model_entry(name).factory.__name__ in IMAGENET_FAMILIES
    batch_size = 16 if imagenet_size else 32
    loader = InMemoryLoader(
        fashion.images[:6400], fashion.labels[:6400], fashion.info.mean, fashion.info.std,
        batch_size=batch_size, device=torch.device("cpu"), train=True,
        augment=BatchAugment(crop_padding=2, flip=True),
    )  # fmt: skip
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    hits, losses = [], []
    batches = (b for epoch in range(1, 3) for b in loader.epoch(epoch))
    for _, batch in zip(range(steps), batches):
        x = F.interpolate(batch.images, size=32) if imagenet_size else batch.images
        x = Numerics().layout(x)  # exact NCHW strides, as the trainer gives its models
        logits = model(x)
        loss = F.cross_entropy(logits, batch.labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        hits.append((logits.argmax(1) == batch.labels).float().mean().item())
    return hits, losses


@pytest.mark.parametrize("name", REPRESENTATIVES)
def test_family_learns_on_fashion_mnist(name, fashion):
    hits, losses = _train(name, fashion, steps=150)
    assert all(torch.isfinite(torch.tensor(losses)))
    # Chance is 10 %; the last 30 training batches must be far better than that.
    accuracy = sum(hits[-30:]) / 30
    assert accuracy > 0.35, f"{name}: training accuracy {accuracy:.2f} over the last 30 batches"
    assert sum(losses[-30:]) < sum(losses[:30])


@pytest.mark.parametrize("name", SMOKE_ONLY)
def test_family_trains_without_error(name, fashion):
    _, losses = _train(name, fashion, steps=10)
    assert len(losses) == 10 and all(torch.isfinite(torch.tensor(losses)))
