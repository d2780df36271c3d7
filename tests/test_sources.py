"""Readers of the real formats: IDX (MNIST, Fashion-MNIST) and CIFAR python batches."""

from __future__ import annotations

import gzip
import io
import pickle
import struct
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from cnnlab.data import download
from cnnlab.data.sources import DATASETS, dataset_info, load_split, locate
from cnnlab.errors import UserError

REAL_FASHION = Path("/usr/share/datasets/fashion-mnist")

# ---------------------------------------------------------------- builders of the real formats


def write_idx(path: Path, array: np.ndarray) -> Path:
    """Write `array` (uint8) as an IDX file, gzipped when `path` ends in .gz."""
    header = struct.pack(f">I{array.ndim}I", 0x800 | array.ndim, *array.shape)
    data = header + np.ascontiguousarray(array, np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def write_idx_set(folder: Path, n_train: int = 12, n_test: int = 5, gz: bool = True, seed: int = 0):
    """Write the four MNIST-style files; return {split: (images (N,28,28), labels (N,))}."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        ext = ".gz" if gz else ""
        write_idx(folder / f"{prefix}-images-idx3-ubyte{ext}", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{ext}", labels)
        out[split] = (images, labels)
    return out


def cifar_pickle(images: np.ndarray, labels: list[int], label_key: str, **extra) -> bytes:
    """Pickle a batch the way the originals are: bytes keys, (N, 3072) rows in CHW order."""
    rows = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    batch = {b"batch_label": b"batch", label_key.encode(): labels, b"data": rows}
    batch[b"filenames"] = [f"img_{i}.png".encode() for i in range(len(images))]
    batch.update({k.encode(): v for k, v in extra.items()})
    # The originals name numpy 1's module path; numpy 2 must still load them.
    return pickle.dumps(batch, protocol=2).replace(b"numpy._core.", b"numpy.core.")


def write_cifar(folder: Path, name: str, per_batch: int = 4, seed: int = 0):
    """Write the extracted CIFAR-10/100 folder; return {split: (images NHWC, labels)}."""
    rng = np.random.default_rng(seed)
    lay = download.PICKLE_LAYOUT[name]
    out_dir = folder / lay.folder
    out_dir.mkdir(parents=True)
    classes = DATASETS[name].num_classes
    key = "fine_labels" if name == "cifar100" else "labels"
    out = {}
    for split, files in lay.splits.items():
        parts = []
        for f in files:
            images = rng.integers(0, 256, (per_batch, 32, 32, 3), dtype=np.uint8)
            labels = rng.integers(0, classes, per_batch).tolist()
            extra = {"coarse_labels": [99 - y for y in labels]} if name == "cifar100" else {}
            (out_dir / f).write_bytes(cifar_pickle(images, labels, key, **extra))
            parts.append((images, np.array(labels)))
        out[split] = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    meta = "batches.meta" if name == "cifar10" else "meta"
    names = [c.encode() for c in DATASETS[name].classes]
    (out_dir / meta).write_bytes(pickle.dumps({b"label_names": names}, protocol=2))
    return out


def write_cifar_archive(folder: Path, name: str, per_batch: int = 4, seed: int = 0):
    """Write the official .tar.gz (holding the real top folder) into `folder`, nothing else."""
    staging = folder.parent / f".staging-{name}-{seed}"
    out = write_cifar(staging, name, per_batch, seed)
    lay = download.PICKLE_LAYOUT[name]
    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(folder / lay.archive, "w:gz") as tar:
        tar.add(staging / lay.folder, arcname=lay.folder)
    return out


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No user cache, $CNNLAB_DATA, mirror or system copy leaks into a test."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for var in ("XDG_CACHE_HOME", download.CACHE_ENV, download.DATA_ENV, download.MIRROR_ENV):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(download, "SYSTEM_DIR", tmp_path / "system")


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("gz", [True, False])
def test_idx_round_trip(tmp_path, gz):
    built = write_idx_set(tmp_path / "d", gz=gz)
    for split, (images, labels) in built.items():
        ds = load_split("fashion_mnist", split, root=tmp_path / "d", download=False)
        assert ds.images.dtype == torch.uint8 and ds.images.shape == (len(labels), 28, 28, 1)
        assert ds.images.is_contiguous()
        assert ds.labels.dtype == torch.int64
        assert np.array_equal(ds.images[..., 0].numpy(), images)
        assert np.array_equal(ds.labels.numpy(), labels)
        assert ds.info is DATASETS["fashion_mnist"] and len(ds) == len(labels)


def test_idx_mixed_gz_and_raw_in_name_subfolder(tmp_path):
    built = write_idx_set(tmp_path / "mnist", gz=True)
    raw = tmp_path / "mnist" / "train-images-idx3-ubyte"
    raw.write_bytes(
        gzip.decompress((tmp_path / "mnist" / "train-images-idx3-ubyte.gz").read_bytes())
    )
    (tmp_path / "mnist" / "train-images-idx3-ubyte.gz").unlink()
    assert locate("mnist", tmp_path) == tmp_path / "mnist"
    ds = load_split("mnist", "train", root=tmp_path, download=False)
    assert np.array_equal(ds.images[..., 0].numpy(), built["train"][0])


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_round_trip(tmp_path, name):
    built = write_cifar(tmp_path, name)
    for split, (images, labels) in built.items():
        ds = load_split(name, split, root=tmp_path, download=False)
        n = 5 * 4 if (name, split) == ("cifar10", "train") else 4
        assert ds.images.shape == (n, 32, 32, 3) and ds.images.dtype == torch.uint8
        assert ds.images.is_contiguous() and ds.labels.dtype == torch.int64
        # Pixel (y, x, c) must come from row offset c*1024 + y*32 + x of the CHW pickle rows.
        assert np.array_equal(ds.images.numpy(), images)
        assert np.array_equal(ds.labels.numpy(), labels)  # fine labels, not coarse ones


def test_cifar_user_points_at_extracted_folder(tmp_path):
    built = write_cifar(tmp_path, "cifar10")
    ds = load_split("cifar10", "test", root=tmp_path / "cifar-10-batches-py", download=False)
    assert np.array_equal(ds.images.numpy(), built["test"][0])


def test_cifar_archive_is_extracted_once(tmp_path):
    built = write_cifar_archive(tmp_path / "d", "cifar10")
    ds = load_split("cifar10", "train", root=tmp_path / "d", download=False)
    assert np.array_equal(ds.images.numpy(), built["train"][0])
    extracted = tmp_path / "d" / "cifar-10-batches-py"
    assert (extracted / "data_batch_5").is_file()
    assert not [p for p in (tmp_path / "d").iterdir() if p.name.startswith(".extract")]
    (tmp_path / "d" / "cifar-10-python.tar.gz").unlink()  # the second load reads the folder
    assert np.array_equal(
        load_split("cifar10", "test", tmp_path / "d", False).labels, built["test"][1]
    )


def test_cifar_archive_in_read_only_folder_extracts_to_cache(tmp_path, monkeypatch):
    built = write_cifar_archive(tmp_path / "ro", "cifar100")
    real_mkdtemp = download.tempfile.mkdtemp

    def mkdtemp(dir, prefix):  # root ignores permission bits, so refuse this folder by hand
        if Path(dir) == tmp_path / "ro":
            raise PermissionError(13, "Permission denied")
        return real_mkdtemp(dir=dir, prefix=prefix)

    monkeypatch.setattr(download.tempfile, "mkdtemp", mkdtemp)
    ds = load_split("cifar100", "test", root=tmp_path / "ro", download=False)
    assert np.array_equal(ds.labels.numpy(), built["test"][1])
    assert (download.cache_dir("cifar100") / "cifar-100-python" / "test").is_file()
    assert not (tmp_path / "ro" / "cifar-100-python").exists()


def test_archive_members_outside_the_folder_are_not_extracted(tmp_path):
    built = write_cifar_archive(tmp_path / "d", "cifar10")
    archive = tmp_path / "d" / "cifar-10-python.tar.gz"
    with tarfile.open(archive) as tar:
        members = [(m, tar.extractfile(m).read() if m.isfile() else None) for m in tar]
    with tarfile.open(archive, "w:gz") as tar:
        for m, data in members:
            tar.addfile(m, io.BytesIO(data) if data is not None else None)
        evil = tarfile.TarInfo("cifar-10-batches-py/../../evil.txt")
        evil.size = 4
        tar.addfile(evil, io.BytesIO(b"evil"))
        link = tarfile.TarInfo("cifar-10-batches-py/passwd")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    ds = load_split("cifar10", "test", root=tmp_path / "d", download=False)
    assert np.array_equal(ds.images.numpy(), built["test"][0])
    assert not (tmp_path / "evil.txt").exists()
    assert not (tmp_path / "d" / "cifar-10-batches-py" / "passwd").exists()


# ---------------------------------------------------------------- damaged files


def _error(tmp_path, name="fashion_mnist", split="train") -> str:
    with pytest.raises(UserError) as err:
        load_split(name, split, root=tmp_path / "d", download=False)
    return str(err.value)


def test_truncated_idx_names_file_and_sizes(tmp_path):
    write_idx_set(tmp_path / "d", gz=False)
    path = tmp_path / "d" / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    msg = _error(tmp_path)
    assert str(path) in msg and "truncated" in msg
    assert f"header says 12 images of 28x28 but the file holds {12 * 784 - 100} bytes" in msg


def test_bad_magic(tmp_path):
    write_idx_set(tmp_path / "d")
    path = tmp_path / "d" / "train-labels-idx1-ubyte.gz"
    write_idx(path, np.zeros((12, 1, 1), np.uint8))  # an images file where labels belong
    msg = _error(tmp_path)
    assert str(path) in msg and "bad magic 0x00000803, expected 0x00000801" in msg


def test_count_mismatch(tmp_path):
    write_idx_set(tmp_path / "d")
    path = tmp_path / "d" / "train-labels-idx1-ubyte.gz"
    write_idx(path, np.zeros(11, np.uint8))
    msg = _error(tmp_path)
    assert str(path) in msg and "11 labels" in msg and "12 images" in msg


def test_label_out_of_range_and_wrong_size(tmp_path):
    write_idx_set(tmp_path / "d")
    labels = tmp_path / "d" / "train-labels-idx1-ubyte.gz"
    write_idx(labels, np.full(12, 10, np.uint8))
    assert str(labels) in (msg := _error(tmp_path)) and "out of range 0..9" in msg
    images = tmp_path / "d" / "t10k-images-idx3-ubyte.gz"
    write_idx(images, np.zeros((5, 32, 32), np.uint8))
    assert str(images) in (msg := _error(tmp_path, split="test")) and "32x32" in msg


@pytest.mark.parametrize("damage", ["crc", "cut"])
def test_corrupt_gzip(tmp_path, damage):
    write_idx_set(tmp_path / "d")
    path = tmp_path / "d" / "train-images-idx3-ubyte.gz"
    data = bytearray(path.read_bytes())
    if damage == "crc":
        data[-8] ^= 0xFF  # the stored CRC-32 no longer matches the contents
    else:
        data = data[: len(data) // 2]
    path.write_bytes(bytes(data))
    msg = _error(tmp_path)
    assert str(path) in msg and "corrupt gzip" in msg


def test_missing_file_is_named(tmp_path):
    write_idx_set(tmp_path / "d")
    (tmp_path / "d" / "t10k-labels-idx1-ubyte.gz").unlink()
    msg = _error(tmp_path, split="test")
    assert str(tmp_path / "d" / "t10k-labels-idx1-ubyte") in msg and "lacks" in msg
    load_split("fashion_mnist", "train", root=tmp_path / "d", download=False)  # train is whole


@pytest.mark.parametrize("damage", ["garbage", "cut", "not_dict", "no_key", "evil"])
def test_corrupt_pickle(tmp_path, damage):
    write_cifar(tmp_path / "d", "cifar10")
    path = tmp_path / "d" / "cifar-10-batches-py" / "test_batch"
    images = np.zeros((2, 32, 32, 3), np.uint8)
    data = {
        "garbage": b"\x00not a pickle at all",
        "cut": path.read_bytes()[:500],
        "not_dict": pickle.dumps([1, 2, 3], protocol=2),
        "no_key": pickle.dumps({b"data": images.reshape(2, -1)}, protocol=2),
        "evil": pickle.dumps({b"data": print}, protocol=2),  # a pickle naming a callable
    }[damage]
    path.write_bytes(data)
    msg = _error(tmp_path, "cifar10", "test")
    assert str(path) in msg
    expected = {
        "no_key": "missing key 'labels'",
        "evil": "refusing to load global __builtin__.print",
    }
    assert expected.get(damage, "") in msg


def test_cifar_bad_rows_and_counts(tmp_path):
    write_cifar(tmp_path / "d", "cifar10")
    path = tmp_path / "d" / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(cifar_pickle(np.zeros((3, 32, 32, 3), np.uint8), [1, 2], "labels"))
    assert "holds 2 'labels' but 3 images" in _error(tmp_path, "cifar10", "test")
    rows = {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}
    path.write_bytes(pickle.dumps(rows, protocol=2))
    assert "hold 100 bytes, expected 3072" in _error(tmp_path, "cifar10", "test")


def test_corrupt_archive(tmp_path):
    write_cifar_archive(tmp_path / "d", "cifar10")
    archive = tmp_path / "d" / "cifar-10-python.tar.gz"
    archive.write_bytes(archive.read_bytes()[:300])
    msg = _error(tmp_path, "cifar10", "test")
    assert str(archive) in msg and "corrupt or truncated archive" in msg
    assert not (tmp_path / "d" / "cifar-10-batches-py").exists()


# ---------------------------------------------------------------- names and the real data


def test_unknown_names_suggest_the_closest():
    with pytest.raises(UserError, match="did you mean 'fashion_mnist'"):
        dataset_info("fashion-mnist")
    with pytest.raises(UserError, match="did you mean 'cifar100'"):
        load_split("cifar-100", "train")
    with pytest.raises(UserError, match="did you mean 'test'"):
        load_split("mnist", "tset")


def test_table_is_consistent():
    for name, info in DATASETS.items():
        assert info.name == name and len(info.classes) == info.num_classes
        assert len(info.mean) == len(info.std) == info.channels
        assert name in download.REMOTE
    assert list(DATASETS["cifar100"].classes) == sorted(DATASETS["cifar100"].classes)


def test_real_fashion_mnist(monkeypatch):
    if not (REAL_FASHION / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"{REAL_FASHION} is absent (apt-get install dataset-fashion-mnist)")
    monkeypatch.setattr(download, "SYSTEM_DIR", REAL_FASHION.parent)
    assert locate("fashion_mnist") == REAL_FASHION
    start = time.perf_counter()
    train = load_split("fashion_mnist", "train", download=False)
    assert time.perf_counter() - start < 2.0
    test = load_split("fashion_mnist", "test", download=False)
    assert train.images.shape == (60000, 28, 28, 1) and test.images.shape == (10000, 28, 28, 1)
    assert train.info.num_classes == 10
    assert torch.bincount(train.labels).tolist() == [6000] * 10
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    pixels = train.images.double() / 255
    assert round(pixels.mean().item(), 4) == train.info.mean[0]
    assert round(pixels.std().item(), 4) == train.info.std[0]
