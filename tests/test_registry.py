"""Every registered model: forward + backward, both input forms, output shape, eval determinism."""

import pytest
import torch

from cnnlab.errors import UserError
from cnnlab.registry import build_model, list_models, model_entry
from tests.helpers import IMAGENET_FAMILIES, SHRINK, small_model


def test_every_family_has_a_shrink_rule():
    families = {model_entry(n).factory.__name__ for n in list_models()}
    assert families == set(SHRINK), "add the new family to SHRINK"


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("in_channels, num_classes, size", [(1, 10, 28), (3, 100, 32)])
def test_forward_backward_shape_and_eval_determinism(name, in_channels, num_classes, size):
    torch.manual_seed(0)
    family = model_entry(name).factory.__name__
    model = small_model(name, in_channels, num_classes)
    size = 64 if family in IMAGENET_FAMILIES else size
    x = torch.randn(2, in_channels, size, size)
    out = model(x)
    assert out.shape == (2, num_classes)
    out.sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads), "some parameter got no gradient"
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


def test_build_model_rejects_unknown_names_and_options_clearly():
    with pytest.raises(UserError, match="did you mean 'preact_resnet20'"):
        build_model("preact_resnet2O")
    with pytest.raises(UserError, match="has no option 'widht'"):
        build_model("wrn16_4", widht=3)
    with pytest.raises(UserError, match="fixed by this variant"):
        build_model("resnet20", depth=32)
    with pytest.raises(UserError, match="norm must be one of"):
        build_model("resnet20", norm="ln")
    assert build_model("resnet20", norm=None, num_classes=7).fc.out_features == 7
