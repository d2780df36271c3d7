"""Experiments over many runs: seed x grid sweeps (`sweep`) and result tables (`report`)."""
