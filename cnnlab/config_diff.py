"""What differs between two configs, as dotted keys (resume refuses an edited config.yaml)."""

from __future__ import annotations

from typing import Any

from cnnlab.config import Config


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested mappings into dotted keys: {'optim': {'lr': 0.1}} -> {'optim.lr': 0.1}."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def differing_keys(saved: Config, current: Config) -> list[str]:
    """Return the sorted dotted keys whose values differ between `saved` and `current`."""
    a, b = flatten(saved.model_dump(mode="json")), flatten(current.model_dump(mode="json"))
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


def config_differences(saved: Config, current: Config) -> list[str]:
    """Return 'key: saved -> current' for every dotted key whose value differs (sorted by key)."""
    a, b = flatten(saved.model_dump(mode="json")), flatten(current.model_dump(mode="json"))
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in differing_keys(saved, current)]
