"""airbench94's network: Keller Jordan's fast CIFAR-10 net, rewritten for cnnlab.

Source: KellerJordan/cifar10-airbench, airbench94.py at commit
01a2367af6ab0586cfaedced4b63c53807d3643c
(94.01 % mean CIFAR-10 test accuracy over n=1000 runs, 3.83 s on one A100, per its header).
The function computed, as read from `make_net`, `ConvGroup`, `BatchNorm`, `Conv` and
`init_whitening_conv` there:

- a 2x2 convolution without padding (32x32 -> 31x31) with 2 * 3 * 2 * 2 = 24 output channels
  and a bias, followed by GELU. Its weights are the whitening filters of the training images'
  2x2 patches: the patch covariance (uncentred, over every position of the first 5,000
  normalised training images) has eigenvectors v_i and eigenvalues l_i; the filters are
  v_i / sqrt(l_i + 5e-4) and their negatives. They are set before training and frozen
  (requires_grad False); the bias (zero at start) trains;
- three conv groups of widths 64, 256, 256 (base width w, then 4w, 4w): 3x3 conv ('same', no
  bias) -> 2x2 max pool -> BN -> GELU -> 3x3 conv -> BN -> GELU (31 -> 15 -> 7 -> 3);
- BatchNorm with eps 1e-12, torch momentum 0.4 (airbench's "0.6" is the weight kept), its
  scale frozen at 1 (only the shift trains);
- each 3x3 conv starts from torch's default init with its first `in_channels` filters set to
  the identity (torch.nn.init.dirac_), an implicit residual;
- a 3x3 max pool (3x3 -> 1x1), a bias-free linear layer 256 -> 10, and the logits times 1/9.

1,972,792 parameters, 1,971,352 of them trained (the whitening weights and the BN scales are
frozen). Differences from airbench's code: the weights are float32 and the precision comes
from cnnlab's autocast (`train.precision`), where airbench stores the net in fp16 with the
BatchNorms in fp32; the whitening statistics are summed in float64, in chunks, instead of one
float32 matrix of every patch (the same covariance, better rounded). The training side of
airbench (its schedule, lookahead EMA, bias learning-rate scale ...) is not part of the net:
see recipes/cifar10/speedrun_gpu.yaml for what cnnlab reproduces of it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.registry import register_variant

# airbench94.py: init_whitening_conv(eps=5e-4), train_loader.images[:5000], BatchNorm's
# eps=1e-12 and momentum 0.6 (torch's momentum is 1 - 0.6), scaling_factor 1/9.
WHITEN_EPS = 5e-4
WHITEN_IMAGES = 5000
BN_EPS = 1e-12
BN_MOMENTUM = 1 - 0.6


def _batch_norm(channels: int) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)
    bn.weight.requires_grad_(False)  # the scale stays 1; only the shift is learned
    return bn


def _conv3x3(in_ch: int, out_ch: int) -> nn.Conv2d:
    conv = nn.Conv2d(in_ch, out_ch, 3, padding="same", bias=False)
    with torch.no_grad():
        # The first in_ch filters pass their input through unchanged: an implicit residual.
        nn.init.dirac_(conv.weight[: min(in_ch, out_ch)])
    return conv


class ConvGroup(nn.Sequential):
    """conv -> 2x2 max pool -> BN -> GELU -> conv -> BN -> GELU."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__(
            _conv3x3(in_ch, out_ch), nn.MaxPool2d(2), _batch_norm(out_ch), nn.GELU(),
            _conv3x3(out_ch, out_ch), _batch_norm(out_ch), nn.GELU(),
        )  # fmt: skip


def patch_covariance(images: torch.Tensor, kernel: int, chunk: int = 500) -> torch.Tensor:
    """Return the uncentred covariance (float64) of every kernel x kernel patch of NCHW
    `images`, each patch flattened in (channel, row, column) order."""
    total, count = None, 0
    for part in images.split(chunk):
        patches = F.unfold(part.double(), kernel)  # (n, c*k*k, positions)
        flat = patches.transpose(1, 2).reshape(-1, patches.shape[1])
        gram = flat.T @ flat
        total = gram if total is None else total + gram
        count += len(flat)
    return total / count


def whitening_filters(images: torch.Tensor, kernel: int, eps: float = WHITEN_EPS) -> torch.Tensor:
    """Return airbench's whitening conv weights for `images`: the patch covariance's
    eigenvectors (largest eigenvalue first) over sqrt(eigenvalue + eps), then their negatives;
    shape (2 * c * k * k, c, k, k)."""
    c = images.shape[1]
    values, vectors = torch.linalg.eigh(patch_covariance(images, kernel))
    values, vectors = values.flip(0), vectors.flip(1)  # eigh sorts ascending
    filters = (vectors.T / torch.sqrt(values + eps)[:, None]).reshape(-1, c, kernel, kernel)
    return torch.cat([filters, -filters])


class Airbench94(nn.Module):
    """airbench94's net (see the module docstring): frozen whitening 2x2 conv + GELU, three
    conv groups, 3x3 max pool, bias-free linear, logits x `logit_scale`.

    The whitening filters depend on the data: `init_from_data(images)` sets them from
    normalised NCHW training images. cnnlab's Trainer calls it on a fresh run with the first
    `init_images` training images (not on resume: the checkpoint holds the filters).
    """

    init_images = WHITEN_IMAGES

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 10,
        width: int = 64,
        whiten_kernel: int = 2,
        logit_scale: float = 1 / 9,
    ) -> None:
        super().__init__()
        if width < 1 or whiten_kernel < 1:
            raise ValueError(f"width and whiten_kernel must be >= 1, got {width}, {whiten_kernel}")
        whiten_width = 2 * in_channels * whiten_kernel**2
        self.whiten = nn.Conv2d(in_channels, whiten_width, whiten_kernel, bias=True)
        nn.init.zeros_(self.whiten.bias)
        self.whiten.weight.requires_grad_(False)
        widths = (width, 4 * width, 4 * width)
        self.features = nn.Sequential(
            nn.GELU(),
            ConvGroup(whiten_width, widths[0]),
            ConvGroup(widths[0], widths[1]),
            ConvGroup(widths[1], widths[2]),
            nn.MaxPool2d(3),  # 3x3 -> 1x1 on 32x32 (and 28x28) inputs
            nn.Flatten(),
        )
        self.fc = nn.Linear(widths[2], num_classes, bias=False)
        self.logit_scale = logit_scale

    @torch.no_grad()
    def init_from_data(self, images: torch.Tensor) -> None:
        """Set the whitening filters from normalised NCHW training images."""
        kernel = self.whiten.kernel_size[0]
        weights = whitening_filters(images, kernel)
        self.whiten.weight.copy_(weights.to(self.whiten.weight))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return class logits for a batch of images."""
        return self.fc(self.features(self.whiten(x))) * self.logit_scale


register_variant(
    "airbench94",
    Airbench94,
    "airbench94's net (K. Jordan): whitened 2x2 stem, GELU conv groups 64/256/256, 1.97M params",
)
