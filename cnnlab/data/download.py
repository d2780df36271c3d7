"""Where dataset files live: locate a local copy, download a missing one, verify, extract."""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

from cnnlab.errors import UserError, closest

log = logging.getLogger(__name__)

DATA_ENV = "CNNLAB_DATA"
MIRROR_ENV = "CNNLAB_MIRROR"
CACHE_ENV = "CNNLAB_CACHE"
# Debian's dataset-* packages install here (dataset-fashion-mnist -> fashion-mnist/).
SYSTEM_DIR = Path("/usr/share/datasets")
SPLITS = ("train", "test")


@dataclass(frozen=True)
class Remote:
    """Official download location of a dataset and the md5 of each file fetched from it."""

    base_url: str
    files: dict[str, str]  # file name -> md5 of exactly the bytes served at base_url + name


# The checksums are those the dataset authors publish (torchvision uses the same ones). They
# apply only to what we download: Debian re-gzipped Fashion-MNIST, so located files are
# validated structurally by the readers instead.
REMOTE: dict[str, Remote] = {
    "fashion_mnist": Remote(
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        {
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
    ),
    "mnist": Remote(
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        {
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
    ),
    "cifar10": Remote(
        "https://www.cs.toronto.edu/~kriz/",
        {"cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a"},
    ),
    "cifar100": Remote(
        "https://www.cs.toronto.edu/~kriz/",
        {"cifar-100-python.tar.gz": "eb9058c3a382ffc7106e4002c42a8d85"},
    ),
}

# IDX datasets: split -> (images, labels) file stems; each may sit there raw or as stem.gz.
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


@dataclass(frozen=True)
class PickleLayout:
    """Where the CIFAR python batches sit: an archive holding `folder` with per-split files."""

    archive: str
    folder: str
    splits: dict[str, tuple[str, ...]]


PICKLE_LAYOUT = {
    "cifar10": PickleLayout(
        "cifar-10-python.tar.gz",
        "cifar-10-batches-py",
        {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)},
    ),
    "cifar100": PickleLayout(
        "cifar-100-python.tar.gz", "cifar-100-python", {"train": ("train",), "test": ("test",)}
    ),
}
DEBIAN_NAMES = {
    "fashion_mnist": "fashion-mnist",
    "mnist": "mnist",
    "cifar10": "cifar-10",
    "cifar100": "cifar-100",
}


def _check_name(name: str, split: str | None = None) -> None:
    if name not in REMOTE:
        raise UserError(f"unknown dataset '{name}'{closest(name, REMOTE)}; known: {sorted(REMOTE)}")
    if split is not None and split not in SPLITS:
        raise UserError(f"unknown split '{split}'{closest(split, SPLITS)}; use 'train' or 'test'")


def cache_dir(name: str) -> Path:
    """Return the per-user download folder for `name` (~/.cache/cnnlab/<name>)."""
    # $CNNLAB_CACHE moves the whole cnnlab cache, as it does for engine/numerics.py.
    base = os.environ.get(CACHE_ENV)
    if not base:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cnnlab"
    return Path(base).expanduser() / name


def idx_path(folder: Path, stem: str) -> Path | None:
    """Return the IDX file `stem` in `folder`, raw or gzipped, or None when neither exists."""
    for path in (folder / stem, folder / f"{stem}.gz"):
        if path.is_file():
            return path
    return None


def _has_all(folder: Path, names: tuple[str, ...]) -> bool:
    return all((folder / n).is_file() for n in names)


def missing_files(name: str, folder: Path, split: str | None = None) -> list[Path]:
    """Return the files of `name` (for `split`, or all splits) that `folder` lacks."""
    splits = SPLITS if split is None else (split,)
    if name not in PICKLE_LAYOUT:
        stems = [stem for s in splits for stem in IDX_FILES[s]]
        return [folder / stem for stem in stems if idx_path(folder, stem) is None]
    lay = PICKLE_LAYOUT[name]
    files = tuple(f for s in splits for f in lay.splits[s])
    # The extracted folder, the archive beside it, or the user pointing at the folder itself.
    if (folder / lay.archive).is_file() or _has_all(folder, files):
        return []
    return [folder / lay.folder / f for f in files if not (folder / lay.folder / f).is_file()]


def search_path(name: str, root: str | os.PathLike | None = None) -> list[Path]:
    """Return the folders looked in for `name`, in look-up order."""
    _check_name(name)
    folders: list[Path] = []
    for base in (root, os.environ.get(DATA_ENV)):
        if base:
            folders += [Path(base).expanduser(), Path(base).expanduser() / name]
    folders += [cache_dir(name), SYSTEM_DIR / DEBIAN_NAMES[name]]
    return folders


def locate(
    name: str, root: str | os.PathLike | None = None, split: str | None = None
) -> Path | None:
    """Return the first folder holding `name`'s files (for `split`, or all splits), or None."""
    _check_name(name, split)
    return next((d for d in search_path(name, root) if not missing_files(name, d, split)), None)


def download_dir(name: str, root: str | os.PathLike | None = None) -> Path:
    """Return where `name` is downloaded: under `root`, else $CNNLAB_DATA, else the cache."""
    _check_name(name)
    base = root or os.environ.get(DATA_ENV)
    if not base:
        return cache_dir(name)
    base = Path(base).expanduser()
    # A folder already holding some IDX files is completed in place; otherwise use a <name>
    # subfolder, because MNIST and Fashion-MNIST share their file names.
    stems = [stem for pair in IDX_FILES.values() for stem in pair]
    if name not in PICKLE_LAYOUT and any(idx_path(base, stem) for stem in stems):
        return base
    return base / name


def mirror_url(name: str, file: str) -> str:
    """Return the URL of `file`: the official one, or under $CNNLAB_MIRROR/<name>/."""
    mirror = os.environ.get(MIRROR_ENV)
    if not mirror:
        return REMOTE[name].base_url + file
    # MNIST and Fashion-MNIST share file names, so a mirror keeps one folder per dataset;
    # '{name}' in the mirror URL places that folder elsewhere.
    base = mirror.replace("{name}", name) if "{name}" in mirror else f"{mirror.rstrip('/')}/{name}"
    return f"{base.rstrip('/')}/{file}"


def md5sum(path: Path) -> str:
    """Return the hex md5 of the file at `path`."""
    digest = hashlib.md5()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(name: str, root: str | os.PathLike | None = None) -> Path:
    """Download the files of `name` that are not yet in its download folder; return it."""
    target = download_dir(name, root)
    for file, md5 in REMOTE[name].files.items():
        present = (target / file).is_file() or (
            file.endswith(".gz") and name not in PICKLE_LAYOUT and (target / file[:-3]).is_file()
        )
        if not present:
            download_file(mirror_url(name, file), target / file, md5)
    return target


def download_file(url: str, dest: Path, md5: str) -> None:
    """Fetch `url` to a temp file beside `dest`, check its md5, then rename it to `dest`."""
    by_hand = f"download it by hand and put it at {dest} (md5 {md5}), or set {MIRROR_ENV}"
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    except OSError as e:
        raise UserError(f"{dest.parent}: cannot write the download there: {e.strerror}") from None
    tmp = Path(tmp_name)
    digest = hashlib.md5()
    log.info("downloading %s -> %s", url, dest)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            for chunk in iter(lambda: response.read(1 << 20), b""):
                digest.update(chunk)
                out.write(chunk)
    except (OSError, ValueError) as e:  # URLError, HTTPError and timeouts are all OSErrors
        tmp.unlink(missing_ok=True)
        # HTTPError reads best whole ("HTTP Error 404: ..."); URLError wraps the socket error.
        reason = e if isinstance(e, urllib.error.HTTPError) else getattr(e, "reason", None) or e
        raise UserError(f"cannot download {url}: {reason}; {by_hand}") from None
    if digest.hexdigest() != md5:
        tmp.unlink(missing_ok=True)
        raise UserError(
            f"{dest}: checksum mismatch for {url}: expected md5 {md5}, got {digest.hexdigest()};"
            " the download was discarded"
        )
    os.replace(tmp, dest)


def pickle_folder(name: str, folder: Path, split: str) -> Path:
    """Return the folder holding `name`'s python batches for `split`, extracting if needed."""
    lay = PICKLE_LAYOUT[name]
    files = lay.splits[split]
    for d in (folder / lay.folder, folder):
        if _has_all(d, files):
            return d
    archive = folder / lay.archive
    out = folder / lay.folder
    if not archive.is_file():
        missing = next(f for f in files if not (out / f).is_file())
        raise UserError(f"{out / missing}: missing, and no {lay.archive} beside it to extract")
    if out.exists():
        missing = next(f for f in files if not (out / f).is_file())
        raise UserError(
            f"{out / missing}: missing; remove the incomplete {out} so that {archive} is"
            " extracted again"
        )
    # Extract beside the archive; a read-only folder (a shared or system copy) falls back to
    # the user's cache, which may hold an earlier extraction.
    for dest in dict.fromkeys((folder, cache_dir(name))):
        out = dest / lay.folder
        if _has_all(out, files):
            return out
        try:
            dest.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=dest, prefix=".extract-"))
        except OSError:
            continue
        try:
            _safe_extract(archive, tmp, lay.folder)
            missing = [f for f in files if not (tmp / lay.folder / f).is_file()]
            if missing:
                raise UserError(f"{archive}: the archive lacks {lay.folder}/{missing[0]}")
            try:
                os.replace(tmp / lay.folder, out)
            except OSError as e:
                if not _has_all(out, files):  # not a concurrent extraction that won the race
                    raise UserError(f"{out}: cannot put the extracted files there: {e}") from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return out
    raise UserError(
        f"{archive}: cannot extract: neither {folder} nor {cache_dir(name)} is writable"
    )


def _safe_extract(archive: Path, dest: Path, folder: str) -> None:
    # Only regular files and folders under the expected top folder are extracted: no absolute
    # paths, '..', links or devices, whatever the archive holds.
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = []
            for m in tar.getmembers():
                parts = Path(m.name).parts
                if parts[:1] != (folder,) or ".." in parts or not (m.isfile() or m.isdir()):
                    log.warning("%s: skipping unexpected member %r", archive, m.name)
                    continue
                members.append(m)
            kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(dest, members=members, **kwargs)
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise UserError(f"{archive}: corrupt or truncated archive: {e}") from None
    except OSError as e:  # e.g. a full disk: the archive may well be fine
        raise UserError(f"{archive}: cannot extract into {dest}: {e}") from None
