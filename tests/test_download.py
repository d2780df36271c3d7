"""Locate, download (from a local mirror) and checksum-verify dataset files."""

from __future__ import annotations

import http.server
import shutil
import socket
import threading
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from cnnlab.data import download
from cnnlab.data.sources import load_split, locate
from cnnlab.errors import UserError

# The builders of the real formats live beside the reader tests.
from tests.test_sources import write_cifar_archive, write_idx_set


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No user cache, $CNNLAB_DATA, mirror or system copy leaks into a test."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for var in ("XDG_CACHE_HOME", download.CACHE_ENV, download.DATA_ENV, download.MIRROR_ENV):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(download, "SYSTEM_DIR", tmp_path / "system")


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    """Build a mirror folder with mnist and cifar10 files; set the checksum table to match."""
    root = tmp_path / "mirror"
    built = {
        "mnist": write_idx_set(root / "mnist", seed=1),
        "cifar10": write_cifar_archive(root / "cifar10", "cifar10", seed=2),
    }
    for name in built:
        for file in download.REMOTE[name].files:
            monkeypatch.setitem(
                download.REMOTE[name].files, file, download.md5sum(root / name / file)
            )
    return root, built


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep the test output clean
        pass


@pytest.fixture
def server(mirror, monkeypatch):
    """Serve the mirror folder on 127.0.0.1 (port 0); yield the list of requested paths."""
    root, _ = mirror
    hits: list[str] = []

    class Counting(_Handler):
        def do_GET(self):
            hits.append(self.path)
            super().do_GET()

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Counting, directory=root))
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    monkeypatch.setenv(download.MIRROR_ENV, f"http://127.0.0.1:{httpd.server_address[1]}/")
    yield hits
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def _parts(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(".part")]


def test_http_download_lands_in_cache_and_is_not_repeated(mirror, server):
    _, built = mirror
    ds = load_split("mnist", "train")
    cache = download.cache_dir("mnist")
    assert cache == Path.home() / ".cache" / "cnnlab" / "mnist"
    assert sorted(p.name for p in cache.iterdir()) == sorted(download.REMOTE["mnist"].files)
    assert len(server) == 4 and not _parts(cache)
    assert np.array_equal(ds.images[..., 0].numpy(), built["mnist"]["train"][0])
    assert np.array_equal(ds.labels.numpy(), built["mnist"]["train"][1])
    test = load_split("mnist", "test")
    load_split("mnist", "train")
    assert len(server) == 4  # present files are never fetched again
    assert np.array_equal(test.labels.numpy(), built["mnist"]["test"][1])


def test_wrong_checksum_fails_and_leaves_existing_files(tmp_path, mirror, server, monkeypatch):
    root, _ = mirror
    cache = download.cache_dir("mnist")
    cache.mkdir(parents=True)
    for f in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        shutil.copy(root / "mnist" / f, cache / f)
    before = {p.name: p.read_bytes() for p in cache.iterdir()}
    actual = download.md5sum(root / "mnist" / "t10k-images-idx3-ubyte.gz")
    monkeypatch.setitem(download.REMOTE["mnist"].files, "t10k-images-idx3-ubyte.gz", "0" * 32)
    with pytest.raises(UserError) as err:
        load_split("mnist", "test")
    msg = str(err.value)
    assert str(cache / "t10k-images-idx3-ubyte.gz") in msg and "checksum mismatch" in msg
    assert f"expected md5 {'0' * 32}, got {actual}" in msg
    assert {p.name: p.read_bytes() for p in cache.iterdir()} == before  # no partial, no change
    assert server == ["/mnist/t10k-images-idx3-ubyte.gz"]
    load_split("mnist", "train")  # the present split still loads, without a request
    assert len(server) == 1


def test_file_mirror_downloads_and_extracts_cifar(mirror, monkeypatch):
    root, built = mirror
    monkeypatch.setenv(download.MIRROR_ENV, root.as_uri())
    ds = load_split("cifar10", "test")
    cache = download.cache_dir("cifar10")
    assert (cache / "cifar-10-python.tar.gz").is_file()
    assert (cache / "cifar-10-batches-py" / "test_batch").is_file()
    assert np.array_equal(ds.images.numpy(), built["cifar10"]["test"][0])


def test_cache_env_moves_the_cache(tmp_path, mirror, server, monkeypatch):
    monkeypatch.setenv(download.CACHE_ENV, str(tmp_path / "c"))
    load_split("mnist", "test")
    assert (tmp_path / "c" / "mnist" / "t10k-images-idx3-ubyte.gz").is_file()
    assert not (Path.home() / ".cache").exists()


def test_download_goes_to_root_then_data_env(tmp_path, mirror, server, monkeypatch):
    data = tmp_path / "data"
    monkeypatch.setenv(download.DATA_ENV, str(data))
    load_split("mnist", "test")
    assert (data / "mnist" / "t10k-images-idx3-ubyte.gz").is_file()
    load_split("mnist", "test", root=tmp_path / "given")
    assert len(server) == 4  # the $CNNLAB_DATA copy is found; root is looked in, not filled
    shutil.rmtree(data)
    load_split("mnist", "test", root=tmp_path / "given")
    assert (tmp_path / "given" / "mnist" / "t10k-labels-idx1-ubyte.gz").is_file()
    assert not download.cache_dir("mnist").exists()


def test_partial_root_is_completed_in_place(tmp_path, mirror, server):
    root, built = mirror
    given = tmp_path / "given"
    given.mkdir()
    shutil.copy(root / "mnist" / "train-images-idx3-ubyte.gz", given)
    ds = load_split("mnist", "train", root=given)
    assert sorted(server) == sorted(
        f"/mnist/{f}" for f in download.REMOTE["mnist"].files if not f.startswith("train-images")
    )
    assert np.array_equal(ds.labels.numpy(), built["mnist"]["train"][1])


def test_lookup_order(tmp_path, monkeypatch):
    # Each place holds a copy with its own labels, so the copy loaded tells where it came from.
    places = {
        "root": tmp_path / "root",
        "env": tmp_path / "env" / "mnist",
        "cache": download.cache_dir("mnist"),
        "system": download.SYSTEM_DIR / "mnist",
    }
    labels = {k: write_idx_set(p, seed=i)["test"][1] for i, (k, p) in enumerate(places.items())}
    monkeypatch.setenv(download.DATA_ENV, str(tmp_path / "env"))
    for key, path in places.items():
        assert locate("mnist", tmp_path / "root") == path
        got = load_split("mnist", "test", root=tmp_path / "root", download=False).labels.numpy()
        assert np.array_equal(got, labels[key])
        shutil.rmtree(path)
    assert locate("mnist", tmp_path / "root") is None


def test_network_failure_names_url_and_where_to_put_files(tmp_path, monkeypatch):
    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv(download.MIRROR_ENV, f"http://127.0.0.1:{port}/")
    with pytest.raises(UserError) as err:
        load_split("cifar100", "train")
    msg = str(err.value)
    assert f"http://127.0.0.1:{port}/cifar100/cifar-100-python.tar.gz" in msg
    assert f"by hand and put it at {download.cache_dir('cifar100')}" in msg
    assert not _parts(tmp_path)


def test_missing_file_on_mirror(mirror, server):
    with pytest.raises(UserError, match=r"cannot download http://.*/cifar100/cifar-100-python"):
        load_split("cifar100", "test")  # the mirror serves no cifar100 folder (HTTP 404)
    assert not _parts(download.cache_dir("cifar100").parent)


def test_no_download_when_not_allowed(mirror, server):
    with pytest.raises(UserError, match="mnist: no test files found .*allow download"):
        load_split("mnist", "test", download=False)
    assert server == []


def test_mirror_url_layouts(monkeypatch):
    official = download.mirror_url("cifar10", "cifar-10-python.tar.gz")
    assert official == "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    monkeypatch.setenv(download.MIRROR_ENV, "https://m.example/data/")
    assert download.mirror_url("mnist", "a.gz") == "https://m.example/data/mnist/a.gz"
    monkeypatch.setenv(download.MIRROR_ENV, "https://m.example/{name}-files")
    assert download.mirror_url("mnist", "a.gz") == "https://m.example/mnist-files/a.gz"
