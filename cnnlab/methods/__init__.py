"""Training methods that plug into the trainer as callbacks."""
