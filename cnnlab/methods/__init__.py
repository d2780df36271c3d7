"""Training methods and probes as plug-ins: each module registers its method (its config
section, when it is active, its callbacks, what it cannot be combined with) on import.

The order of the imports is the order in which their callbacks run in an epoch.
"""

from cnnlab.methods import bn_momentum, ema, freeze, lookahead, rejuvenation  # noqa: F401, I001
from cnnlab.methods import patch_shuffle_features, recu, probes  # noqa: F401, I001
