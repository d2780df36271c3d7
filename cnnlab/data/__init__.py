"""Datasets: real file formats, locate/download/verify, batched augmentation and loaders."""
