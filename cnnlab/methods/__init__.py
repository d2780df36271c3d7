"""Training methods and probes as plug-ins: each module registers its method (its config
section, when it is active, its callbacks, what it cannot be combined with) on import.

The order in which their callbacks run is cnnlab.registry.METHOD_ORDER, not the order of these
imports.
"""

from cnnlab.methods import bn_momentum, ema, freeze, lookahead, rejuvenation  # noqa: F401, I001
from cnnlab.methods import patch_shuffle_features, recu, probes  # noqa: F401, I001
