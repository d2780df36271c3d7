"""From a Config to the objects of a run: data, model, method callbacks and a Trainer."""
