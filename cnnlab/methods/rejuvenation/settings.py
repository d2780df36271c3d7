"""The `nr` config section: Neural Rejuvenation's settings (`nr.enabled=true` turns it on)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from cnnlab.config import Section


class NRSettings(Section):
    """Neural Rejuvenation (Qiao et al. 2019), config section `nr`; `nr.enabled=true` is on."""

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
    # Neural rescaling (Qiao et al. 2019) once, before the first epoch after the rebuild.
    bn_target: float | None = Field(None, gt=0)
