"""Fixtures for every test."""

import pytest
import torch

from cnnlab.data.download import SYSTEM_DIR, cache_dir, search_path
from tests.helpers import FASHION


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    # Keep the numerics cache and any download out of the user's home during tests.
    cache = tmp_path_factory.getbasetemp() / "cnnlab-cache"
    monkeypatch.setenv("CNNLAB_CACHE", str(cache))
    monkeypatch.delenv("CNNLAB_DATA", raising=False)
    monkeypatch.delenv("CNNLAB_MIRROR", raising=False)
    # Fashion-MNIST found outside the Debian folder (downloaded into the cache or $CNNLAB_DATA)
    # is linked into the isolated cache, where the runs of the tests look.
    linked = cache_dir("fashion_mnist")
    if FASHION is not None and FASHION.parent != SYSTEM_DIR and not linked.exists():
        linked.parent.mkdir(parents=True, exist_ok=True)
        linked.symlink_to(FASHION, target_is_directory=True)


@pytest.fixture
def fashion_mnist_data():
    """Return the Fashion-MNIST folder; fail (never skip) when cnnlab cannot find it."""
    if FASHION is None:
        looked = ", ".join(str(p) for p in search_path("fashion_mnist"))
        pytest.fail(
            f"Fashion-MNIST is not in any folder cnnlab looks in ({looked}); "
            "`make data` or `cnnlab data fetch fashion_mnist` puts it there",
            pytrace=False,
        )
    return FASHION


def pytest_collection_modifyitems(config, items):
    """Skip tests marked needs_cuda where there is no CUDA device (they test GPU-only paths),
    and those of them that read Fashion-MNIST where it is missing: a lent GPU machine may lack
    it, and the CPU tests already fail loudly for it."""
    cuda = torch.cuda.is_available()
    no_cuda = pytest.mark.skip(reason="needs a CUDA device")
    no_data = pytest.mark.skip(reason="needs Fashion-MNIST (not found on this GPU machine)")
    for item in items:
        if "needs_cuda" not in item.keywords:
            continue
        if not cuda:
            item.add_marker(no_cuda)
        elif FASHION is None and "fashion_mnist_data" in getattr(item, "fixturenames", ()):
            item.add_marker(no_data)
