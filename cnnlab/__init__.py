"""cnnlab: train, compare and revive convolutional image classifiers."""

from cnnlab.registry import build_model, list_models

__all__ = ["build_model", "list_models"]
__version__ = "0.1.0"
