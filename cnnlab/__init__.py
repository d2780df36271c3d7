"""cnnlab: train, compare and revive convolutional image classifiers.

The names below load lazily, so that `import cnnlab` stays cheap for tools that need only a
part of it (the sweep planner imports no torch).
"""

from __future__ import annotations

import importlib
from typing import Any

from cnnlab.version import VERSION

__version__ = VERSION

# public name -> the module that defines it
_EXPORTS = {
    "Trainer": "cnnlab.engine.trainer",
    "Callback": "cnnlab.engine.callbacks",
    "train": "cnnlab.run.training",
    "Config": "cnnlab.config",
    "load_config": "cnnlab.config",
    "UserError": "cnnlab.errors",
    "build_model": "cnnlab.registry",
    "list_models": "cnnlab.registry",
    "register_model": "cnnlab.registry",
    "register_method": "cnnlab.registry",
    "register_probe": "cnnlab.registry",
    "register_dataset": "cnnlab.datasets",
    "Probe": "cnnlab.methods.probe",
    "ProbeResult": "cnnlab.methods.probe",
    "Section": "cnnlab.config",
}
_MODULES = {"datasets": "cnnlab.datasets"}

__all__ = sorted([*_EXPORTS, *_MODULES])


def __getattr__(name: str) -> Any:
    if name in _MODULES:
        return importlib.import_module(_MODULES[name])
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'cnnlab' has no attribute '{name}'")


def __dir__() -> list[str]:
    # The public names load lazily, so they are not in the module's namespace until first used;
    # listing them here lets dir() and notebook completion show them (and not the helpers).
    return sorted({*__all__, *(name for name in globals() if name.startswith("__"))})
