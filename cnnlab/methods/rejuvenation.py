"""Neural Rejuvenation (METHODS §2): sparsify BN scales, measure utilisation, rebuild, retrain.

A network is read as a graph of Conv+BN *units* (`unit_graph`): each unit names the units whose
outputs, concatenated in that order, feed it (none for the image; one for a chain; several
after DenseNet's concatenations), and whether it is *fixed* (feeds a residual addition, so it
is never pruned and never penalised). Utilisation is the share of conv weights whose input
and output channels are both live (`inspect_utilisation`, `parameter_utilisation`). When it
falls to `nr.target`, `rejuvenate` drops dead channels, widens every unit by the same factor,
copies the survivors into the first slots and initialises the newcomers; the result is a
*plan* (plain data: widths and splits per unit) that `apply_architecture` turns back into the
same shapes, which is how a checkpoint taken after the rebuild is resumed or evaluated.

Supported networks: the CIFAR VGGs (bias-free convs with BN, e.g. `vgg19_nr`), the CIFAR
post-activation ResNets with projection shortcuts (`resnet164`, or `shortcut_kind=B`), the
conv-BN-ReLU DenseNets (`densenet100_k40_nr`, or `post_activation=True`), and for ImageNet
`resnet18/34/50/101`, NR's `vgg16_nr` and `densenet121_nr`. `neural_rescale` is NR's
`--nr-bn-target`.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch
from pydantic import Field
from torch import nn

from cnnlab.config import Section
from cnnlab.engine.callbacks import Callback
from cnnlab.engine.checkpoint import copy_file_atomic
from cnnlab.errors import UserError
from cnnlab.methods.probe import Probe, ProbeResult
from cnnlab.models.densenet import DenseNet, DenseUnit
from cnnlab.models.imagenet import ImageNetDenseNet, ImageNetResNet, NRImageNetVGG
from cnnlab.models.layers import ShortcutA
from cnnlab.models.nr_layers import SplitConv2d, TwoHeadLinear
from cnnlab.models.resnet import CifarResNet
from cnnlab.models.vgg import CifarVGG
from cnnlab.registry import register_method, register_probe

if TYPE_CHECKING:
    from cnnlab.engine.trainer import Trainer


class NRSettings(Section):
    """Neural Rejuvenation (METHODS §2), config section `nr`; `nr.enabled=true` turns it on."""

    enabled: bool = False
    # lambda of the L1 subgradient on BN scales; the start value under the adaptive schedule.
    sparsity: float = Field(1e-4, ge=0)
    sparsity_schedule: Literal["constant", "adaptive"] = "constant"
    increase_threshold: float = Field(0.01, ge=0)  # adaptive: raise lambda when util fell less
    increase_step: float = Field(5e-5, ge=0)
    target: float = Field(0.25, gt=0, le=1)  # >= 0.999 turns NR off
    live_threshold: float = Field(0.01, gt=0, lt=1)
    all_dead_threshold: float = Field(1e-3, ge=0)
    mode: Literal["separate", "cross_attention"] = "separate"
    flops: bool = False
    compress_only: bool = False
    # Neural rescaling (METHODS §2 step 10) once, before the first epoch after the rebuild.
    bn_target: float | None = Field(None, gt=0)


NEW_SCALE = 0.5  # BN scale of rejuvenated channels
NEW_FC_STD = 0.01  # std of the classifier columns that read new channels


@dataclass(frozen=True)
class Unit:
    """One Conv+BN unit: module paths, the units feeding it (concatenated; () = image), fixed."""

    conv: str
    bn: str
    sources: tuple[int, ...]
    fixed: bool


@dataclass(frozen=True)
class UnitGraph:
    """The units in forward order, the classifier with its sources, DenseNet's concatenations.

    `concats` maps a module joining [x, branch(x)] to (the units making x, the unit making
    branch(x)); after rejuvenation it concatenates survivors and newcomers separately.
    """

    units: tuple[Unit, ...]
    classifier: str
    classifier_sources: tuple[int, ...]
    concats: tuple[tuple[str, tuple[int, ...], int], ...] = ()
    integer_rate: bool = False  # DenseNet: the expansion rate is int(sqrt(all / live))


@dataclass(frozen=True)
class Utilisation:
    """What `inspect_utilisation` measured: the ratio, its counts, and per-unit live masks."""

    ratio: float
    live_weights: float
    all_weights: float
    masks: tuple[torch.Tensor, ...]  # bool, one per unit, True = live output channel
    all_dead: tuple[bool, ...]

    def live_channels(self, graph: UnitGraph) -> dict[str, tuple[int, int]]:
        """Return {conv path: (live channels, channels)} per unit."""
        return {
            u.conv: (int(m.sum()), len(m)) for u, m in zip(graph.units, self.masks, strict=True)
        }


def _bn_after(seq: nn.Sequential, i: int, where: str) -> None:
    if i + 1 >= len(seq) or not isinstance(seq[i + 1], nn.BatchNorm2d):
        raise UserError(f"rejuvenation needs BatchNorm after every conv ({where}.{i}); use norm=bn")


def _vgg_graph(model: CifarVGG | NRImageNetVGG) -> UnitGraph:
    units: list[Unit] = []
    for i, m in enumerate(model.features):
        if isinstance(m, nn.Conv2d):
            if m.bias is not None:
                raise UserError(
                    "rejuvenation needs bias-free convs (vgg19_nr, or model.conv_bias=false)"
                )
            _bn_after(model.features, i, "features")
            source = (len(units) - 1,) if units else ()
            units.append(Unit(f"features.{i}", f"features.{i + 1}", source, False))
    return UnitGraph(tuple(units), "fc", (len(units) - 1,))


def _resnet_graph(model: CifarResNet | ImageNetResNet) -> UnitGraph:
    # The stem and every unit feeding an addition are fixed, so each block's input is all live
    # and any fixed unit of the previous block stands for it.
    units = [Unit("stem.0", "stem.1", (), True)]
    _bn_after(model.stem, 0, "stem")
    block_input = 0
    for b, block in enumerate(model.stages):
        where = f"stages.{b}"
        if isinstance(block.skip, ShortcutA):
            raise UserError(
                "rejuvenation needs projection shortcuts in a ResNet (model.shortcut_kind=B): "
                "zero-padded ones would mix survivors and new channels in the additions"
            )
        if not isinstance(block.se, nn.Identity) or not isinstance(block.after_add, nn.Identity):
            raise UserError("rejuvenation does not support se or bn_after_add in a ResNet")
        convs = [i for i, m in enumerate(block.branch) if isinstance(m, nn.Conv2d)]
        if any(block.branch[i].groups != 1 for i in convs):
            raise UserError("rejuvenation does not support grouped convs (ResNeXt)")
        source = block_input
        for j, i in enumerate(convs):
            _bn_after(block.branch, i, f"{where}.branch")
            fixed = j == len(convs) - 1
            units.append(Unit(f"{where}.branch.{i}", f"{where}.branch.{i + 1}", (source,), fixed))
            source = len(units) - 1
        if isinstance(block.skip, nn.Sequential):
            units.append(Unit(f"{where}.skip.0", f"{where}.skip.1", (block_input,), True))
        block_input = source
    return UnitGraph(tuple(units), "fc", (block_input,))


def _densenet_graph(model: DenseNet | ImageNetDenseNet) -> UnitGraph:
    # The features at any point are the concatenation of some units' outputs (`features`);
    # a dense unit appends its last conv, a transition replaces them by its own conv.
    if not isinstance(model.head[0], nn.AdaptiveAvgPool2d):
        raise UserError(
            "rejuvenation needs conv-BN-ReLU DenseNet units (densenet100_k40_nr, densenet121_nr, "
            "or model.post_activation=true): a pre-activation BN does not gate its conv's outputs"
        )
    if isinstance(model, DenseNet):
        stem_path, body = "stem", [(f"blocks.{i}", m) for i, m in enumerate(model.blocks)]
    else:  # ImageNet: features = [stem, dense units and transitions]
        stem_path = "features.0"
        body = [(f"features.{i}", m) for i, m in enumerate(model.features) if i > 0]
    _bn_after(model.get_submodule(stem_path), 0, stem_path)
    units = [Unit(f"{stem_path}.0", f"{stem_path}.1", (), False)]
    features: tuple[int, ...] = (0,)
    concats = []
    for path, module in body:
        dense = isinstance(module, DenseUnit)
        seq, where = (module.branch, f"{path}.branch") if dense else (module.body, f"{path}.body")
        source = features
        for i, m in enumerate(seq):
            if isinstance(m, nn.Conv2d):
                _bn_after(seq, i, where)
                units.append(Unit(f"{where}.{i}", f"{where}.{i + 1}", source, False))
                source = (len(units) - 1,)
        if dense:
            concats.append((path, features, source[0]))
            features = (*features, source[0])
        else:
            features = source
    # NR's CIFAR DenseNet widens by int(sqrt(all / live)), its ImageNet one by the float.
    integer = isinstance(model, DenseNet)
    return UnitGraph(tuple(units), "fc", features, tuple(concats), integer_rate=integer)


def unit_graph(model: nn.Module) -> UnitGraph:
    """Return the Conv+BN units of a supported network; a UserError for any other."""
    if isinstance(model, (CifarVGG, NRImageNetVGG)):
        return _vgg_graph(model)
    if isinstance(model, (CifarResNet, ImageNetResNet)):
        return _resnet_graph(model)
    if isinstance(model, (DenseNet, ImageNetDenseNet)):
        return _densenet_graph(model)
    raise UserError(
        f"rejuvenation supports the CIFAR VGGs (vgg19_nr), post-activation ResNets (resnet164, "
        f"resnet18..101), NR's ImageNet VGG (vgg16_nr) and conv-BN-ReLU DenseNets "
        f"(densenet100_k40_nr, densenet121_nr), not {type(model).__name__}"
    )


def conv_output_pixels(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, int]:
    """Return out_h*out_w of every conv for one input of `input_shape` (C, H, W)."""
    pixels: dict[str, int] = {}
    hooks = [
        m.register_forward_hook(
            lambda mod, inp, out, name=name: pixels.__setitem__(name, out.shape[2] * out.shape[3])
        )
        for name, m in model.named_modules()
        if isinstance(m, nn.Conv2d)
    ]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            device = next(model.parameters()).device
            model(torch.zeros(1, *input_shape, device=device))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return pixels


@torch.no_grad()
def inspect_utilisation(
    model: nn.Module,
    live_threshold: float = 0.01,
    all_dead_threshold: float = 1e-3,
    input_shape: tuple[int, ...] | None = None,
) -> Utilisation:
    """Measure live channels and utilisation (by FLOPs when `input_shape` is given).

    Channel c of a unit is dead if |gamma_c| < live_threshold * max|gamma|; the whole unit is
    dead if max|gamma| < all_dead_threshold or none of its inputs is live; a fixed unit that
    is not wholly dead has every channel live. The classifier is not counted.
    """
    graph = unit_graph(model)
    pixels = conv_output_pixels(model, input_shape) if input_shape is not None else {}
    masks: list[torch.Tensor] = []
    all_dead: list[bool] = []
    live_w = all_w = 0.0
    for u in graph.units:
        conv = model.get_submodule(u.conv)
        scale = model.get_submodule(u.bn).weight.detach().abs().float().cpu()
        in_mask = (
            torch.cat([masks[s] for s in u.sources])
            if u.sources
            else torch.ones(conv.in_channels, dtype=torch.bool)
        )
        dead = not bool(in_mask.any()) or float(scale.max()) < all_dead_threshold
        if dead:
            out_mask = torch.zeros_like(scale, dtype=torch.bool)
        elif u.fixed:
            out_mask = torch.ones_like(scale, dtype=torch.bool)
        else:
            out_mask = scale >= live_threshold * scale.max()
        per_pair = conv.weight[0, 0].numel() * pixels.get(u.conv, 1)
        live_w += int(out_mask.sum()) * int(in_mask.sum()) * per_pair
        all_w += conv.weight.shape[0] * conv.weight.shape[1] * per_pair
        masks.append(out_mask)
        all_dead.append(dead)
    ratio = live_w / all_w if all_w else 1.0
    return Utilisation(ratio, live_w, all_w, tuple(masks), tuple(all_dead))


def parameter_utilisation(model: nn.Module, live_threshold: float = 0.01) -> float:
    """Return the share of conv weights whose input and output channels are both live."""
    return inspect_utilisation(model, live_threshold).ratio


def live_channels(model: nn.Module, live_threshold: float = 0.01) -> dict[str, tuple[int, int]]:
    """Return {conv path: (live channels, channels)} of every Conv+BN unit."""
    return inspect_utilisation(model, live_threshold).live_channels(unit_graph(model))


def _set_submodule(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, name, module)


def apply_architecture(model: nn.Module, plan: dict[str, Any]) -> nn.Module:
    """Give `model` the shapes of a rejuvenation plan, freshly initialised; return it.

    New convs are He fan-out normal, new BN has scale 0.5 and shift 0, the classifier is
    N(0, 0.01^2) with zero bias. `rejuvenate` then copies the survivors over this.
    """
    if plan.get("method") != "rejuvenation":
        raise UserError(f"unknown architecture change {plan.get('method')!r} in the checkpoint")
    for u in plan["units"]:
        old_conv = model.get_submodule(u["conv"])
        old_bn = model.get_submodule(u["bn"])
        conv = SplitConv2d(
            u["in"], u["out"], old_conv.kernel_size, old_conv.stride, old_conv.padding,
            u["live_in"], u["live_out"], plan["mode"],
        )  # fmt: skip
        fan_out = conv.kernel_size[0] * conv.kernel_size[1] * u["out"]
        nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / fan_out))
        bn = nn.BatchNorm2d(u["out"], eps=old_bn.eps, momentum=old_bn.momentum)
        nn.init.constant_(bn.weight, NEW_SCALE)
        device = old_conv.weight.device
        _set_submodule(model, u["conv"], conv.to(device))
        _set_submodule(model, u["bn"], bn.to(device))
    c = plan["classifier"]
    old_fc = model.get_submodule(c["name"])
    fc = TwoHeadLinear(c["in"], old_fc.out_features, c["live_in"])
    nn.init.normal_(fc.weight, 0.0, NEW_FC_STD)
    nn.init.zeros_(fc.bias)
    _set_submodule(model, c["name"], fc.to(old_fc.weight.device))
    for join in plan.get("concats", []):
        model.get_submodule(join["module"]).live_split = tuple(join["live"])
    return model


def _survivors(mask: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    # cnnlab keeps the strongest channel of a wholly dead unit rather than deleting the unit,
    # so every chain (VGG) and every residual branch keeps a path (see README departures).
    idx = mask.nonzero().flatten()
    return idx if len(idx) else scale.abs().argmax().reshape(1).cpu()


def _input_survivors(
    model: nn.Module, graph: UnitGraph, keep: list[torch.Tensor], sources: tuple[int, ...]
) -> torch.Tensor:
    # Index of the survivors in the old concatenation of `sources` (each offset by the widths
    # before it); in the new one they come first, in the same order.
    parts, offset = [], 0
    for s in sources:
        parts.append(keep[s] + offset)
        offset += model.get_submodule(graph.units[s].bn).num_features
    return torch.cat(parts)


@torch.no_grad()
def rejuvenate(
    model: nn.Module, report: Utilisation, mode: str = "separate"
) -> tuple[nn.Module, dict[str, Any]]:
    """Return (the rebuilt copy of `model`, its plan) from a utilisation report of `model`.

    Expansion r = sqrt(all / live) (DenseNet: int of it); every unit gets int(live_out * r)
    channels (fixed units int(C * r); at least one new channel each), its inputs the widths of
    its sources.
    """
    graph = unit_graph(model)
    rate = math.sqrt(report.all_weights / max(report.live_weights, 1.0))
    if graph.integer_rate:
        rate = float(int(rate))
    keep = [
        _survivors(m, model.get_submodule(u.bn).weight)
        for u, m in zip(graph.units, report.masks, strict=True)
    ]
    widths = [max(int(len(k) * rate), len(k) + 1) for k in keep]
    units = []
    for i, u in enumerate(graph.units):
        in_width = (
            sum(widths[s] for s in u.sources)
            if u.sources
            else model.get_submodule(u.conv).in_channels
        )
        live_in = sum(len(keep[s]) for s in u.sources)
        units.append(
            {"conv": u.conv, "bn": u.bn, "in": in_width, "out": widths[i],
             "live_in": live_in, "live_out": len(keep[i])}
        )  # fmt: skip
    src = graph.classifier_sources
    plan = {
        "method": "rejuvenation",
        "mode": mode,
        "units": units,
        "classifier": {
            "name": graph.classifier,
            "in": sum(widths[s] for s in src),
            "live_in": sum(len(keep[s]) for s in src),
        },
        "concats": [
            {"module": path, "live": [sum(len(keep[s]) for s in xs), len(keep[y])]}
            for path, xs, y in graph.concats
        ],
    }
    new = apply_architecture(copy.deepcopy(model), plan)
    for i, u in enumerate(graph.units):
        out_idx = keep[i]
        lo = len(out_idx)
        old_w = model.get_submodule(u.conv).weight
        w = new.get_submodule(u.conv).weight
        if not u.sources:
            w[:lo] = old_w[out_idx.to(old_w.device)]
        else:
            in_idx = _input_survivors(model, graph, keep, u.sources).to(old_w.device)
            li = len(in_idx)
            w[:lo, :li] = old_w[out_idx.to(old_w.device)][:, in_idx]
            w[:lo, li:] = 0  # the cross blocks start at zero
            w[lo:, :li] = 0
        old_bn, bn = model.get_submodule(u.bn), new.get_submodule(u.bn)
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(bn, name)[:lo] = getattr(old_bn, name)[out_idx.to(old_w.device)]
        bn.num_batches_tracked.copy_(old_bn.num_batches_tracked)
    old_fc, fc = model.get_submodule(graph.classifier), new.get_submodule(graph.classifier)
    in_idx = _input_survivors(model, graph, keep, src).to(old_fc.weight.device)
    fc.weight[:, : len(in_idx)] = old_fc.weight[:, in_idx]
    fc.bias.copy_(old_fc.bias)
    return new, plan


def _in_layout(
    values: list[torch.Tensor], live: list[int], sources: tuple[int, ...]
) -> torch.Tensor:
    # A conv's input channels: its sources' outputs, survivors of all sources first (a rebuilt
    # DenseNet concatenates them so); with nothing rebuilt (live 0) simply in source order.
    survivors = [values[s][: live[s]] for s in sources]
    return torch.cat(survivors + [values[s][live[s] :] for s in sources])


@torch.no_grad()
def neural_rescale(model: nn.Module, target: float) -> None:
    """Neural rescaling (METHODS §2 step 10): small BN scales raised to `target`, same function.

    Per non-fixed unit, g = min(|gamma|, target): the shift is divided by g/target, every
    |gamma| <= target becomes +-target, and the convs it feeds multiply those input channels
    by g/target, which under ReLU leaves the function unchanged. As in NR's code the
    classifier multiplies its inputs by g without dividing by target (so a non-fixed source
    scales the logits, less the bias, by target). Channels with gamma exactly 0 are left alone.
    """
    graph = unit_graph(model)
    factors: list[torch.Tensor] = []  # per unit: what its output channels were divided by
    live: list[int] = []
    for u in graph.units:
        conv, bn = model.get_submodule(u.conv), model.get_submodule(u.bn)
        live.append(conv.live_out if isinstance(conv, SplitConv2d) else 0)
        if u.sources:
            conv.weight.mul_(_in_layout(factors, live, u.sources).view(1, -1, 1, 1))
        factor = torch.ones_like(bn.weight)
        if not u.fixed:  # a fixed unit's scales are not sparsified; it keeps them
            scale = bn.weight.abs()
            rescaled = (scale > 0) & (scale < target)
            factor[rescaled] = scale[rescaled] / target
            bn.bias.div_(factor)
            bn.weight[rescaled] = torch.sign(bn.weight[rescaled]) * target
        factors.append(factor)
    fc = model.get_submodule(graph.classifier)
    quirk = [f * target if not graph.units[i].fixed else f for i, f in enumerate(factors)]
    fc.weight.mul_(_in_layout(quirk, live, graph.classifier_sources).view(1, -1))


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def separate_mode_params(model: nn.Module, plan: dict[str, Any]) -> int:
    """Return the parameters a rebuilt net uses without cross connections (cross blocks unused).

    This is how the NR README counts its networks (VGG-19 9.99M, ResNet-164 0.88M).
    """
    unused = 0
    for u in plan["units"]:
        if u["live_in"]:
            taps = model.get_submodule(u["conv"]).weight[0, 0].numel()
            new_out, new_in = u["out"] - u["live_out"], u["in"] - u["live_in"]
            unused += (u["live_out"] * new_in + new_out * u["live_in"]) * taps
    return _count(model) - unused


class Rejuvenation(Callback):
    """The Neural Rejuvenation loop: L1 on BN scales, utilisation per epoch, one rebuild."""

    def __init__(self, cfg: NRSettings) -> None:
        self.cfg = cfg
        self.sparsity = cfg.sparsity
        self.previous: float | None = None  # last epoch's utilisation (adaptive schedule)
        # "training": sparsify and watch; "rejuvenated": rebuilt; "off": target >= 0.999, or
        # the target was not reached within train.epochs extra epochs.
        self.phase = "off" if cfg.target >= 0.999 else "training"
        self.penalised: list[torch.Tensor] = []
        self.rescaled = False  # nr.bn_target applied to the rebuilt network
        self.compressed_now = False  # compress_only rebuilt in this session

    def on_train_start(self, trainer: Trainer) -> None:
        """Check the model and the options fit, and collect the penalised BN scales."""
        graph = unit_graph(trainer.model)
        model = trainer.model
        self.penalised = [model.get_submodule(u.bn).weight for u in graph.units if not u.fixed]
        if self.phase == "off" and self.cfg.target >= 0.999:
            trainer.run.log("nr: target >= 0.999, plain training")

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        """With nr.bn_target, rescale the rebuilt network once before it trains.

        This is NR's `--nr-bn-target` on resuming the `compress_only` checkpoint; an
        uninterrupted run rescales at the same point, so both train the same network.
        """
        target = self.cfg.bn_target
        if self.phase == "rejuvenated" and target is not None and not self.rescaled:
            neural_rescale(trainer.model, target)
            self.rescaled = True
            trainer.run.log(f"nr: neural rescaling, BN scales below {target} raised to it")

    def on_before_step(self, trainer: Trainer) -> None:
        """Add lambda * sign(gamma) to the gradient of every non-fixed BN scale."""
        if self.phase != "training" or not self.sparsity:
            return
        for w in self.penalised:
            if w.grad is not None:
                w.grad.add_(torch.sign(w.detach()), alpha=self.sparsity)

    def on_epoch_end(self, trainer: Trainer, epoch: int, row: dict[str, Any]) -> None:
        """Log utilisation; extend the run by this epoch; rebuild once the target is reached."""
        if self.phase != "training":
            return
        cfg = self.cfg
        shape = trainer.input_shape if cfg.flops else None
        report = inspect_utilisation(
            trainer.model, cfg.live_threshold, cfg.all_dead_threshold, shape
        )
        graph = unit_graph(trainer.model)
        counts = report.live_channels(graph)
        row["nr_utilisation"] = report.ratio
        row["nr_sparsity"] = self.sparsity
        row["nr_live_channels"] = sum(live for live, _ in counts.values())
        layers = " ".join(f"{live}/{total}" for live, total in counts.values())
        trainer.run.log(
            f"nr epoch {epoch}: utilisation {report.ratio:.4f} (target {cfg.target}), "
            f"lambda {self.sparsity:.3g}, live channels per unit: {layers}"
        )
        if trainer.extra_epochs >= trainer.cfg.train.epochs:
            # Without a cap a run whose utilisation never reaches the target would not end.
            self.phase = "off"
            trainer.run.log(
                f"nr: utilisation did not reach {cfg.target} within {trainer.extra_epochs} "
                "extra epochs; training on without rejuvenation"
            )
            return
        trainer.extra_epochs += 1  # this epoch does not consume the LR schedule
        if report.ratio <= cfg.target:
            self._rebuild(trainer, report, row)
        elif cfg.sparsity_schedule == "adaptive":
            if self.previous is not None and self.previous - report.ratio < cfg.increase_threshold:
                self.sparsity += cfg.increase_step
        self.previous = report.ratio

    def _rebuild(self, trainer: Trainer, report: Utilisation, row: dict[str, Any]) -> None:
        before = _count(trainer.model)
        new, plan = rejuvenate(trainer.model, report, self.cfg.mode)
        trainer.replace_model(new, plan)
        self.phase = "rejuvenated"
        self.penalised = []
        self.sparsity = 0.0
        row["params"] = trainer.params
        widths = " ".join(f"{u['live_out']}+{u['out'] - u['live_out']}" for u in plan["units"])
        trainer.run.log(
            f"nr: rejuvenated at utilisation {report.ratio:.4f}: params {before} -> "
            f"{trainer.params} ({separate_mode_params(new, plan)} without the cross blocks), "
            f"mode {self.cfg.mode}; widths per unit (survivors+new): {widths}; "
            f"fresh optimizer at lr {trainer.cfg.optim.lr}, the LR schedule starts now"
        )
        if self.cfg.compress_only:
            self.compressed_now = True
            trainer.stop_requested = True
            trainer.run.log("nr: compress_only, stopping after this epoch's checkpoint")

    def on_train_end(self, trainer: Trainer, summary: dict[str, Any]) -> None:
        """Under compress_only, keep the rebuilt checkpoint as NR_<model>_<target>.pt."""
        # Only the session that rebuilt: resuming afterwards must not overwrite the file; and
        # under torchrun only the rank that writes the run folder.
        if self.compressed_now and trainer.run.writer:
            name = f"NR_{trainer.model_name}_{self.cfg.target}.pt"
            copy_file_atomic(trainer.run.last, trainer.run.path / name)
            trainer.run.log(f"nr: saved {name}")

    def on_checkpoint_load(self, trainer: Trainer, state: dict[str, Any]) -> None:
        """Rebuild the shapes of a checkpoint taken after the rebuild, before its weights load."""
        if state.get("architecture") is not None:
            plan = state["architecture"]
            trainer.reshape_model(apply_architecture(trainer.model, plan), plan)

    def state_dict(self) -> dict[str, Any]:
        """Return lambda, the phase, the previous utilisation and whether it rescaled."""
        return {
            "sparsity": self.sparsity,
            "phase": self.phase,
            "previous": self.previous,
            "rescaled": self.rescaled,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` saved."""
        self.sparsity = state["sparsity"]
        self.phase = state["phase"]
        self.previous = state["previous"]
        self.rescaled = state.get("rescaled", False)  # absent in checkpoints before bn_target


class NRUtilisation(Probe):
    """Neural Rejuvenation's parameter utilisation (METHODS §2 step 4), where it is defined.

    Per layer: the share of each Conv+BN unit's output channels that are live; summary: the
    share of conv weights whose input and output channels are both live. Only the networks
    whose unit graph NR knows (README, Neural Rejuvenation) are measured.
    """

    name = "nr_utilisation"

    def __init__(self, live_threshold: float) -> None:
        self.live_threshold = live_threshold

    def measure(self, model: nn.Module, batches: list[torch.Tensor]) -> ProbeResult:
        """Read the BN scales of every unit; no reading for networks NR does not cover."""
        # A rebuilt network's split convs hold blocks that separate mode never uses, so NR's
        # ratio is defined only before the rebuild (NR itself stops measuring there too).
        if any(isinstance(m, SplitConv2d) for m in model.modules()):
            return ProbeResult({}, None)
        try:
            graph = unit_graph(model)
        except UserError:
            return ProbeResult({}, None)  # a network NR does not cover
        report = inspect_utilisation(model, self.live_threshold)
        live = report.live_channels(graph)
        return ProbeResult({k: n / total for k, (n, total) in live.items()}, report.ratio)


register_probe("nr_utilisation", lambda settings: NRUtilisation(settings.nr_live_threshold))
register_method(
    "nr",
    lambda cfg: [Rejuvenation(cfg.nr)],
    active=lambda cfg: cfg.nr.enabled,
    section="nr",
    settings=NRSettings,
    conflicts={
        "ema": "the rebuild changes the network's shapes, which the weight average cannot follow"
    },
    doc="Neural Rejuvenation: sparsify BN scales, rebuild dead channels once, retrain",
)
