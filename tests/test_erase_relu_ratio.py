"""EraseReLU's ratio: one rounding rule (nearest, halves up), checked on ResNet-20 and -56."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cnnlab.models.layers import erased_modules
from cnnlab.registry import build_model


def erased_per_stage(name: str, ratio: float) -> list[int]:
    """Count, per stage, the blocks whose ReLU after the addition was erased."""
    with torch.device("meta"):
        model = build_model(name, erase_relu=True, erase_relu_ratio=ratio)
    blocks = [m for m in model.modules() if hasattr(m, "out_relu")]
    n = len(blocks) // 3
    return [sum(isinstance(b.out_relu, nn.Identity) for b in blocks[s * n : (s + 1) * n])
            for s in range(3)]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "ratio", "per_stage"),
    [
        # Halves round up: 0.5 x 9 = 4.5 -> 5 (Python's round() gave 4), 0.5 x 3 = 1.5 -> 2.
        ("resnet56", 0.5, 5),
        ("resnet20", 0.5, 2),
        ("resnet56", 1.0, 9),
        ("resnet20", 0.0, 0),
        ("resnet56", 0.3, 3),  # 2.7 -> 3
        ("resnet20", 0.1, 0),  # 0.3 -> 0
    ],
)
def test_ratio_rounds_halves_up_on_resnet20_and_56(name, ratio, per_stage):
    assert erased_per_stage(name, ratio) == [per_stage] * 3


def test_ratio_is_read_from_its_decimal_text():
    # 0.35 * 10 is 3.4999... in binary floating point; the rule reads 3.5 and rounds up.
    assert len(erased_modules(10, 0.35)) == 4
    assert erased_modules(9, 0.5) == {8, 7, 5, 3, 1}  # spread, the last one included
