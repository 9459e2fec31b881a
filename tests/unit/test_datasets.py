"""Real data sets from verified local IDX files (raw or .gz), and scikit-learn's digits."""

from __future__ import annotations

import gzip
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from lifelong.platform.errors import DataError
from lifelong.streams.datasets import (MNIST, SPLIT_FILES, data_cache, find_idx_dir, load_dataset,
                                       parse_idx, read_verified)

MNIST_FILES = [name for pair in SPLIT_FILES.values() for name in pair]
CORRUPT = "t10k-labels-idx1-ubyte"


@pytest.fixture(scope="module")
def mnist_dir() -> Path:
    """The cached MNIST directory (raw IDX files), as the platform itself finds it."""
    return find_idx_dir(MNIST)


@pytest.fixture(scope="module")
def mnist(mnist_dir):
    return load_dataset("mnist", data_dir=str(mnist_dir))


def idx_blob(dims: tuple[int, ...], data: bytes, type_code: int = 0x08) -> bytes:
    return bytes([0, 0, type_code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims) + data


def raw_file(directory: Path, name: str) -> Path:
    path = directory / name
    return path if path.is_file() else directory / f"{name}.gz"


def raw_bytes(directory: Path, name: str) -> bytes:
    path = raw_file(directory, name)
    data = path.read_bytes()
    return gzip.decompress(data) if path.suffix == ".gz" else data


def link_others(src: Path, dst: Path, except_name: str) -> None:
    for name in MNIST_FILES:
        if name != except_name:
            source = raw_file(src, name)
            (dst / source.name).symlink_to(source)


# -- parse_idx -------------------------------------------------------------------------------------------

def test_parse_idx_images():
    data = bytes(range(24))
    array = parse_idx(idx_blob((2, 3, 4), data))
    assert array.dtype == np.uint8
    assert array.shape == (2, 3, 4)
    np.testing.assert_array_equal(array, np.arange(24, dtype=np.uint8).reshape(2, 3, 4))
    # dims are big-endian: a dim > 255 must survive
    big = parse_idx(idx_blob((1, 300), bytes(300)))
    assert big.shape == (1, 300)


def test_parse_idx_labels():
    array = parse_idx(idx_blob((5,), bytes([7, 2, 1, 0, 4])))
    assert array.shape == (5,)
    assert array.tolist() == [7, 2, 1, 0, 4]


@pytest.mark.parametrize("blob", [
    b"",
    b"\x00\x00",
    idx_blob((2,), b"\x00\x00\x00\x00\x00\x00\x00\x00", type_code=0x0D),  # float32, not uint8
    b"\x01\x00\x08\x01" + struct.pack(">I", 1) + b"\x05",  # bad magic
])
def test_parse_idx_refuses_non_ubyte_blobs(blob):
    with pytest.raises(DataError):
        parse_idx(blob)


# -- digits ------------------------------------------------------------------------------------------------

def test_digits_shape_classes_and_determinism():
    a = load_dataset("digits")
    b = load_dataset("digits")
    assert a.name == "digits"
    assert a.train.x.shape == (1347, 64) and a.test.x.shape == (450, 64)  # 75/25 of 1797
    assert a.train.x.dtype == torch.uint8 and a.train.y.dtype == torch.int64
    assert a.input_dim == 64
    assert a.n_classes == 10
    assert a.max_value == 16.0 and int(a.train.x.max()) <= 16
    assert sorted(a.train.y.unique().tolist()) == list(range(10))
    assert sorted(a.test.y.unique().tolist()) == list(range(10))
    for part in ("train", "test"):
        assert torch.equal(getattr(a, part).x, getattr(b, part).x)
        assert torch.equal(getattr(a, part).y, getattr(b, part).y)
    assert a.mean == b.mean and a.std == b.std
    scaled = a.train.x.float() / 16.0
    assert a.mean == pytest.approx(float(scaled.mean()))
    assert a.std == pytest.approx(float(scaled.std()))


# -- MNIST from the cache -----------------------------------------------------------------------------------

def test_mnist_from_the_cache(mnist):
    assert mnist.name == "mnist"
    assert mnist.train.x.shape == (60000, 784) and mnist.test.x.shape == (10000, 784)
    assert mnist.train.y.shape == (60000,) and mnist.test.y.shape == (10000,)
    assert mnist.train.x.dtype == torch.uint8 and mnist.test.y.dtype == torch.int64
    assert mnist.input_dim == 784 and mnist.n_classes == 10 and mnist.max_value == 255.0
    # well-known facts about the real files
    assert mnist.train.y[:3].tolist() == [5, 0, 4]
    assert mnist.test.y[:3].tolist() == [7, 2, 1]
    assert torch.bincount(mnist.test.y).tolist() == [980, 1135, 1032, 1010, 982, 892, 958,
                                                    1028, 974, 1009]
    assert mnist.mean == pytest.approx(0.1307, abs=1e-4)
    assert mnist.std == pytest.approx(0.3081, abs=1e-4)


def test_mnist_default_location_is_the_data_cache(mnist_dir):
    assert mnist_dir == data_cache() / "mnist"


@pytest.mark.parametrize("damage", ["truncate", "flip_byte"])
def test_corrupt_file_is_refused_naming_it(mnist_dir, tmp_path, damage):
    link_others(mnist_dir, tmp_path, CORRUPT)
    blob = bytearray(raw_bytes(mnist_dir, CORRUPT))
    if damage == "truncate":
        blob = blob[:-500]
    else:
        blob[5000] ^= 0x01  # a label 0..9 becomes another valid-looking label
    (tmp_path / CORRUPT).write_bytes(bytes(blob))
    with pytest.raises(DataError) as info:
        load_dataset("mnist", data_dir=str(tmp_path))
    message = str(info.value)
    assert CORRUPT in message
    assert "SHA-256" in message
    assert "\n" not in message
    for other in MNIST_FILES:
        if other != CORRUPT:
            assert other not in message


def test_missing_directory(tmp_path):
    missing = tmp_path / "no_such_dir"
    with pytest.raises(DataError) as info:
        load_dataset("mnist", data_dir=str(missing))
    assert str(missing) in str(info.value)


def test_directory_missing_one_file(mnist_dir, tmp_path):
    link_others(mnist_dir, tmp_path, CORRUPT)
    with pytest.raises(DataError) as info:
        load_dataset("mnist", data_dir=str(tmp_path))
    assert str(tmp_path) in str(info.value)


def test_gz_and_raw_files_verify_alike(mnist_dir, mnist, tmp_path):
    link_others(mnist_dir, tmp_path, CORRUPT)
    (tmp_path / f"{CORRUPT}.gz").write_bytes(gzip.compress(raw_bytes(mnist_dir, CORRUPT)))
    assert not (tmp_path / CORRUPT).exists()
    data = load_dataset("mnist", data_dir=str(tmp_path))
    assert torch.equal(data.test.y, mnist.test.y)
    assert torch.equal(data.test.x, mnist.test.x)
    # the SHA-256 is of the decompressed bytes: both forms pass read_verified alike
    expected = MNIST.sha256[CORRUPT]
    assert read_verified(tmp_path / f"{CORRUPT}.gz", expected) == raw_bytes(mnist_dir, CORRUPT)


def test_truncated_gz_is_refused_naming_it(mnist_dir, tmp_path):
    link_others(mnist_dir, tmp_path, CORRUPT)
    packed = gzip.compress(raw_bytes(mnist_dir, CORRUPT))
    (tmp_path / f"{CORRUPT}.gz").write_bytes(packed[: len(packed) // 2])
    with pytest.raises(DataError) as info:
        load_dataset("mnist", data_dir=str(tmp_path))
    assert f"{CORRUPT}.gz" in str(info.value)


def test_gz_of_corrupt_content_is_refused(mnist_dir, tmp_path):
    link_others(mnist_dir, tmp_path, CORRUPT)
    blob = bytearray(raw_bytes(mnist_dir, CORRUPT))
    blob[-1] ^= 0x02
    (tmp_path / f"{CORRUPT}.gz").write_bytes(gzip.compress(bytes(blob)))
    with pytest.raises(DataError) as info:
        load_dataset("mnist", data_dir=str(tmp_path))
    assert f"{CORRUPT}.gz" in str(info.value)
    assert "SHA-256" in str(info.value)


def test_copied_raw_files_load_like_the_cache(mnist_dir, mnist, tmp_path):
    link_others(mnist_dir, tmp_path, CORRUPT)
    shutil.copyfile(raw_file(mnist_dir, CORRUPT), tmp_path / raw_file(mnist_dir, CORRUPT).name)
    data = load_dataset("mnist", data_dir=str(tmp_path))
    assert torch.equal(data.test.y, mnist.test.y)
