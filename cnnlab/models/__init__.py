"""Model families; importing this package registers every family module in it."""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "layers":
        importlib.import_module(f"{__name__}.{_module.name}")
