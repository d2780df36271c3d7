"""The package version: `cnnlab --version`, `cnnlab.__version__` and pyproject.toml read it."""

VERSION = "0.1.0"
