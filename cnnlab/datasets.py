"""Datasets for Python users: `load(name)`, `from_tensors(...)`, `register_dataset`, `names()`.

import cnnlab
data = cnnlab.datasets.load("fashion_mnist", val_size=5000)
data = cnnlab.datasets.from_tensors(x_train, y_train, x_test, y_test, mean=..., std=...)
"""

from cnnlab.data.datasets import (
    DataError,
    DatasetEntry,
    Splits,
    from_tensors,
    load,
    names,
    register_dataset,
)

__all__ = [
    "DataError",
    "DatasetEntry",
    "Splits",
    "from_tensors",
    "load",
    "names",
    "register_dataset",
]
