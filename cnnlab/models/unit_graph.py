"""How a network describes its Conv+norm units to methods that prune or widen channels (NR).

A family that Neural Rejuvenation (Qiao et al. 2019) can rebuild implements `DescribesUnits`: a
method `unit_graph()` returning a `UnitGraph`, plain data naming module paths. Methods read
and replace modules only through those paths, never through a family's attributes, so a
family changes its internals freely as long as its graph stays true. A family that cannot be
rebuilt in some configuration raises a UserError from `unit_graph()` saying what is missing.

`GraphBuilder` holds the bookkeeping every family needs (unit indices, the conv-norm pairs of
a Sequential, the checks NR relies on).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from torch import nn

from cnnlab.errors import UserError


@dataclass(frozen=True)
class Unit:
    """One Conv+BN unit: module paths, the units feeding it (concatenated; () = image), fixed.

    A *fixed* unit feeds a residual addition: it is never pruned or penalised, and whoever
    reads it reads the sum, every channel of which NR counts live (official CAddList.inspect),
    so a wholly dead branch does not make the units after the addition dead.
    """

    conv: str
    bn: str
    sources: tuple[int, ...]
    fixed: bool


@dataclass(frozen=True)
class Concat:
    """A module returning [x, branch(x)] (DenseNet): the units making x, the unit making branch(x).

    After the rebuild the module concatenates survivors and newcomers separately, through
    `SplitsConcat.set_live_split`.
    """

    module: str
    inputs: tuple[int, ...]
    branch: int


@dataclass(frozen=True)
class UnitGraph:
    """The units in forward order, the classifier (an nn.Linear) with its sources, the concats."""

    units: tuple[Unit, ...]
    classifier: str
    classifier_sources: tuple[int, ...]
    concats: tuple[Concat, ...] = ()
    integer_rate: bool = False  # NR's CIFAR DenseNet widens by int(sqrt(all / live))


@runtime_checkable
class DescribesUnits(Protocol):
    """A network that can say which of its convs and norms form NR's units."""

    def unit_graph(self) -> UnitGraph:
        """Return the network's units (a UserError where this configuration has none)."""
        ...


@runtime_checkable
class SplitsConcat(Protocol):
    """A concatenating module that can keep [survivors, newcomers] apart after a rebuild."""

    def set_live_split(self, live: tuple[int, int]) -> None:
        """Concatenate as [x[:lx], y[:ly], x[lx:], y[ly:]] from now on (lx, ly = `live`)."""
        ...


@dataclass
class GraphBuilder:
    """Collects units in forward order (`add` one, or `chain` the conv-BN pairs of a Sequential)."""

    units: list[Unit] = field(default_factory=list)

    def add(self, conv: str, bn: str, sources: tuple[int, ...], fixed: bool = False) -> int:
        """Append one unit and return its index."""
        self.units.append(Unit(conv, bn, sources, fixed))
        return len(self.units) - 1

    def chain(
        self, seq: nn.Sequential, path: str, sources: tuple[int, ...], fixed_last: bool = False
    ) -> tuple[int, ...]:
        """Add every conv of `seq` (each followed by its BatchNorm) as a chain; return its end.

        Returns `sources` unchanged when `seq` has no conv.
        """
        convs = [i for i, m in enumerate(seq) if isinstance(m, nn.Conv2d)]
        for j, i in enumerate(convs):
            check_conv_bn(seq, i, path)
            fixed = fixed_last and j == len(convs) - 1
            sources = (self.add(f"{path}.{i}", f"{path}.{i + 1}", sources, fixed),)
        return sources

    def graph(
        self,
        classifier: str,
        classifier_sources: tuple[int, ...],
        concats: tuple[Concat, ...] = (),
        integer_rate: bool = False,
    ) -> UnitGraph:
        """Return the finished graph."""
        return UnitGraph(tuple(self.units), classifier, classifier_sources, concats, integer_rate)


def check_conv_bn(seq: nn.Sequential, i: int, path: str) -> None:
    """Refuse a conv that has a bias, is grouped, or is not followed by a BatchNorm2d."""
    conv = seq[i]
    if conv.bias is not None:
        raise UserError("rejuvenation needs bias-free convs (vgg19_nr, or model.conv_bias=false)")
    if conv.groups != 1:
        raise UserError("rejuvenation does not support grouped convs (ResNeXt)")
    if i + 1 >= len(seq) or not isinstance(seq[i + 1], nn.BatchNorm2d):
        raise UserError(f"rejuvenation needs BatchNorm after every conv ({path}.{i}); use norm=bn")
