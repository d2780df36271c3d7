"""Neural Rejuvenation (Qiao et al. 2019): sparsify BN scales, measure, rebuild, retrain.

A network that NR supports describes itself as a graph of Conv+BN *units*
(`cnnlab.models.unit_graph`): each unit names the units whose outputs, concatenated in that
order, feed it (none for the image; one for a chain; several after DenseNet's
concatenations), and whether it is *fixed* (feeds a residual addition, so it is never pruned
and never penalised). The parts, one concern each:

- `graph`: reads that description (`unit_graph`), conv output sizes for FLOPs weighting;
- `utilisation`: live channels and the share of live conv weights (`inspect_utilisation`);
- `surgery`: the rebuild as a plain-data plan (`rejuvenate`, `apply_architecture`, which a
  resumed or evaluated checkpoint replays);
- `rescale`: neural rescaling (`neural_rescale`, NR's `--nr-bn-target`);
- `callback`: the training loop's part (`Rejuvenation`);
- `probe`: the `nr_utilisation` dead-unit probe (`NRUtilisation`, `nr_utilisation_probe`);
- `settings`: the `nr` config section (`NRSettings`).

Importing the package registers the method (`nr`, which cannot run with `ema`) and its probe.

docs/nr_fidelity.md lists where each behaviour comes from in the official code.
"""

from cnnlab.methods.rejuvenation.callback import Rejuvenation
from cnnlab.methods.rejuvenation.graph import conv_output_pixels, unit_graph
from cnnlab.methods.rejuvenation.probe import NRUtilisation, nr_utilisation_probe
from cnnlab.methods.rejuvenation.rescale import neural_rescale
from cnnlab.methods.rejuvenation.settings import NRSettings
from cnnlab.methods.rejuvenation.surgery import apply_architecture, rejuvenate, separate_mode_params
from cnnlab.methods.rejuvenation.utilisation import (
    Utilisation,
    inspect_utilisation,
    live_channels,
    parameter_utilisation,
)
from cnnlab.registry import register_method, register_probe

__all__ = [
    "NRSettings",
    "NRUtilisation",
    "Rejuvenation",
    "Utilisation",
    "apply_architecture",
    "conv_output_pixels",
    "inspect_utilisation",
    "live_channels",
    "neural_rescale",
    "nr_utilisation_probe",
    "parameter_utilisation",
    "rejuvenate",
    "separate_mode_params",
    "unit_graph",
]

register_probe("nr_utilisation", nr_utilisation_probe)
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
