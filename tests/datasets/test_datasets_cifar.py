"""CIFAR-10 from the JPEG zip: decoding, order and layout, the checksummed uint8 cache and its fall-backs.

Most tests build a small zip in tmp_path with Pillow (PNG members where exact pixel values matter, JPEG
otherwise) and register it under a toy name; the `data` tests read the staged zip quickly, and the full
decode (15 s or more) is marked slow.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import os
import re
import zipfile

import numpy as np
import pytest

import spred.datasets as ds
from spred.datasets import _base, _cifar, _registry

Image = pytest.importorskip("PIL.Image")

CLASSES = ("cat", "dog", "frog")
PER_CLASS = {"train": 4, "test": 2}


def _pixel(split: str, cls: int, k: int) -> tuple[int, int, int]:
    return (10 * cls + k, 100 + (split == "test"), 200 + cls)


def _image_bytes(color, fmt="PNG", size=(32, 32)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, fmt)
    return buf.getvalue()


def _make_zip(path, fmt="PNG", extra=None):
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as z:
        for split, n in PER_CLASS.items():
            for c, name in enumerate(CLASSES):
                for k in range(n):
                    z.writestr(f"{split}/{name}/{k:04d}.{fmt.lower()}", _image_bytes(_pixel(split, c, k), fmt))
        for name, data in (extra or {}).items():
            z.writestr(name, data)
    return path


@pytest.fixture
def toy_zip(tmp_path, monkeypatch):
    """'toy_cifar_train' / 'toy_cifar_test' registered on tmp_path/home/toy/toy.zip; the user cache in tmp_path."""
    home = tmp_path / "home"
    (home / "toy").mkdir(parents=True)
    path = _make_zip(home / "toy" / "toy.zip")
    sha = _base.sha256_file(path)
    for split, n in PER_CLASS.items():
        base = ds.dataset_info("cifar10_" + split)
        entry = dataclasses.replace(
            base, name=f"toy_cifar_{split}", files=(_registry.DataFile("toy/toy.zip", sha, path.stat().st_size),),
            n_samples=n * len(CLASSES), classes=tuple((c, n) for c in CLASSES),
        )  # fmt: skip
        monkeypatch.setitem(_registry._BY_NAME, entry.name, entry)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "usercache"))
    monkeypatch.setattr("sys.platform", "linux")
    monkeypatch.setattr(_cifar, "_IN_MEMORY", {})
    return home, path, sha


@pytest.fixture
def decodes(monkeypatch):
    calls = []
    real = _cifar.read_image_zip
    monkeypatch.setattr(_cifar, "read_image_zip", lambda p: calls.append(p) or real(p))
    return calls


# --------------------------------------------------------------------------- decoding


def test_read_image_zip_layout_order_and_labels(tmp_path):
    arrays = _cifar.read_image_zip(_make_zip(tmp_path / "t.zip"))
    assert arrays["class_names"].tolist() == list(CLASSES)
    images, labels = arrays["train_images"], arrays["train_labels"]
    assert images.shape == (12, 3, 32, 32) and images.dtype == np.uint8 and images.flags.c_contiguous
    # file number first, then class: image k of every class in turn
    assert labels.tolist() == [0, 1, 2] * 4
    expected = [_pixel("train", c, k) for k in range(4) for c in range(3)]
    assert [tuple(int(v) for v in img[:, 5, 7]) for img in images] == expected  # channels first: R, G, B
    assert arrays["test_labels"].tolist() == [0, 1, 2] * 2


def test_jpeg_members_decode_close_to_their_colour(tmp_path):
    arrays = _cifar.read_image_zip(_make_zip(tmp_path / "t.zip", fmt="JPEG"))
    got = arrays["test_images"].astype(int).mean(axis=(2, 3))
    want = np.array([_pixel("test", c, k) for k in range(2) for c in range(3)])
    assert np.abs(got - want).max() < 3  # lossy, but close


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"train/readme.txt": b"x"}, r"member 'train/readme\.txt' is not an image at <split>/<class>/<file>\.jpg"),
        ({"cat.png": b"x"}, r"member 'cat\.png' is not an image"),
        ({"train/cat/9999.png": _image_bytes((0, 0, 0), size=(16, 16))}, r"'train/cat/9999\.png' is 16x16, the others are 32x32"),
    ],
)
def test_read_image_zip_refuses_other_layouts(tmp_path, extra, message):
    with pytest.raises(ValueError, match=message):
        _cifar.read_image_zip(_make_zip(tmp_path / "t.zip", extra=extra))


# --------------------------------------------------------------------------- loading and the cache


def test_load_dataset_decodes_once_and_caches_beside_the_zip(toy_zip, decodes):
    home, path, sha = toy_zip
    train = ds.load_dataset("toy_cifar_train", data_home=home)
    assert train.data.shape == (12, 3072) and train.data.dtype == np.float32
    assert train.images.shape == (12, 3, 32, 32) and np.shares_memory(train.images, train.data)
    assert train.target.tolist() == [0, 1, 2] * 4 and train.target_names.tolist() == list(CLASSES)
    assert train.data[0, 0] == np.float32(_pixel("train", 0, 0)[0] / 255)
    test = ds.load_dataset("toy_cifar_test", data_home=home)  # both splits were decoded at once
    assert test.data.shape == (6, 3072) and len(decodes) == 1
    cache = path.with_name("toy.uint8.npz")
    assert cache.is_file() and not [p for p in cache.parent.iterdir() if p.name.endswith(".part")]
    _cifar._IN_MEMORY.clear()
    again = ds.load_dataset("toy_cifar_train", data_home=home)  # from the cache file
    np.testing.assert_array_equal(again.data, train.data)
    assert len(decodes) == 1


@pytest.mark.skipif(os.name != "posix", reason="umask is POSIX")
def test_cache_file_mode_follows_the_umask(toy_zip):
    home, path, _ = toy_zip
    old = os.umask(0o002)
    try:
        ds.load_dataset("toy_cifar_test", data_home=home)
    finally:
        os.umask(old)
    assert path.with_name("toy.uint8.npz").stat().st_mode & 0o777 == 0o664


def _rewrite_cache(cache, **changes):
    with np.load(cache) as npz:
        arrays = dict(npz)
    arrays.update(changes)
    with open(cache, "wb") as f:
        np.savez(f, **arrays)


def test_corrupt_cache_is_decoded_again(toy_zip, decodes, caplog):
    home, path, _ = toy_zip
    ds.load_dataset("toy_cifar_train", data_home=home)
    cache = path.with_name("toy.uint8.npz")
    with np.load(cache) as npz:
        images = npz["train_images"].copy()
    images[11, 0, 0, 0] ^= 0xFF
    _rewrite_cache(cache, train_images=images)  # a valid file whose arrays no longer match their sha256
    with caplog.at_level(logging.WARNING, logger="spred.datasets"):
        b = ds.load_dataset("toy_cifar_train", data_home=home)
    assert "its arrays fail their checksum" in caplog.text
    assert len(decodes) == 2 and b.images[11, 0, 0, 0] == np.float32(_pixel("train", 2, 3)[0] / 255)
    data = bytearray(cache.read_bytes())  # a flipped byte on disk: the npz's own CRC catches it
    with np.load(cache) as npz:
        at = bytes(data).index(npz["train_images"][11].tobytes()[:64]) + 10
    data[at] ^= 0xFF
    cache.write_bytes(bytes(data))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="spred.datasets"):
        ds.load_dataset("toy_cifar_train", data_home=home)
    assert "ignoring the unreadable CIFAR cache" in caplog.text and len(decodes) == 3
    cache.write_bytes(b"truncated")
    ds.load_dataset("toy_cifar_train", data_home=home)
    assert len(decodes) == 4


def test_cache_of_another_zip_is_not_used(toy_zip, decodes):
    home, path, _ = toy_zip
    ds.load_dataset("toy_cifar_train", data_home=home)
    _rewrite_cache(path.with_name("toy.uint8.npz"), source_sha256=np.array("0" * 64))
    ds.load_dataset("toy_cifar_train", data_home=home)
    assert len(decodes) == 2


@pytest.mark.skipif(os.name != "posix", reason="folder modes are POSIX")
def test_read_only_data_folder_uses_the_user_cache_then_memory(toy_zip, tmp_path, decodes, caplog):
    home, path, sha = toy_zip
    path.parent.chmod(0o555)  # a read-only copy of the data (CI): nothing is written beside the zip
    try:
        b = ds.load_dataset("toy_cifar_train", data_home=home)
        assert not path.with_name("toy.uint8.npz").exists()
        user = tmp_path / "usercache" / "spred" / "decoded" / sha[:16] / "toy.uint8.npz"
        assert user.is_file()
        ds.load_dataset("toy_cifar_test", data_home=home)
        assert len(decodes) == 1
        # neither folder writable: decoded once, kept in memory, with a warning
        user.unlink()
        user.parent.chmod(0o555)
        with caplog.at_level(logging.WARNING, logger="spred.datasets"):
            again = ds.load_dataset("toy_cifar_train", data_home=home)
            ds.load_dataset("toy_cifar_test", data_home=home)
        assert "kept in memory only" in caplog.text and len(decodes) == 2
        np.testing.assert_array_equal(again.data, b.data)
    finally:
        path.parent.chmod(0o755)
        (tmp_path / "usercache" / "spred" / "decoded" / sha[:16]).chmod(0o755)


def test_corrupt_zip_is_a_checksum_error(toy_zip):
    home, path, sha = toy_zip
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ds.ChecksumError, match=rf"Checksum mismatch for file '{re.escape(str(path))}': expected sha256 {sha}"):
        ds.load_dataset("toy_cifar_train", data_home=home)


def test_missing_zip_says_where_it_looked(tmp_path):
    where = re.escape(str(tmp_path / "cifar10_jpeg" / "cifar10_jpeg.zip"))
    with pytest.raises(ds.DatasetNotFoundError, match=rf"file 'cifar10_jpeg/cifar10_jpeg\.zip' not found at '{where}'.*no public URL"):
        ds.load_cifar10(data_home=tmp_path)


def test_load_cifar10_reads_the_registered_zip(toy_zip, monkeypatch):
    home, _, _ = toy_zip
    monkeypatch.setitem(_registry._BY_NAME, "cifar10_train", _registry._BY_NAME["toy_cifar_train"])
    monkeypatch.setitem(_registry._BY_NAME, "cifar10_test", _registry._BY_NAME["toy_cifar_test"])
    X, y = ds.load_cifar10(data_home=home)
    assert X.shape == (12, 3, 32, 32) and X.dtype == np.float32 and y.dtype == np.int64
    Xt, yt = ds.load_cifar10(data_home=home, train=False, flatten=True, dtype="uint8")
    assert Xt.shape == (6, 3072) and Xt.dtype == np.uint8 and yt.tolist() == [0, 1, 2] * 2
    np.testing.assert_array_equal(Xt.reshape(-1, 3, 32, 32)[0, :, 0, 0], _pixel("test", 0, 0))
    with pytest.raises(ValueError, match=r"The 'dtype' parameter of load_cifar10 must be one of \('float32', 'uint8'\)\. Got 'float64'"):
        ds.load_cifar10(data_home=home, dtype="float64")


# --------------------------------------------------------------------------- the staged zip


@pytest.mark.data
def test_staged_zip_has_the_official_split_and_counts(data_home):
    info = ds.dataset_info("cifar10_train")
    path = data_home / info.files[0].path
    if not path.is_file():
        pytest.skip(f"the CIFAR-10 JPEG zip is not in SPRED_DATA ({path} missing)")
    ds.verify_file(path, info.files[0].sha256)
    with zipfile.ZipFile(path) as z:
        splits = _cifar._members(z, str(path))
        for split, per_class in (("train", 5000), ("test", 1000)):
            classes = [c for _, c in splits[split]]
            assert sorted(set(classes)) == list(ds.dataset_info(f"cifar10_{split}").target_names)
            assert all(classes.count(c) == per_class for c in set(classes))
        some = sorted(splits["test"])[:: 1000][:10]
        images, labels = _cifar._decode_split(z, some, sorted({c for _, c in splits["test"]}), str(path))
    assert images.shape == (10, 3, 32, 32) and labels.tolist() == list(range(10))


@pytest.mark.data
@pytest.mark.slow
def test_staged_cifar10_decodes_with_the_manifest_statistics(data_home, tmp_path):
    info = ds.dataset_info("cifar10_train")
    zip_path = data_home / info.files[0].path
    if not zip_path.is_file():
        pytest.skip(f"the CIFAR-10 JPEG zip is not in SPRED_DATA ({zip_path} missing)")
    home = tmp_path / "home"
    (home / "cifar10_jpeg").mkdir(parents=True)
    (home / info.files[0].path).symlink_to(zip_path)  # the cache goes to tmp_path, not the shared folder
    X, y = ds.load_cifar10(data_home=home, dtype="uint8")
    Xt, yt = ds.load_cifar10(data_home=home, train=False, dtype="uint8")
    assert X.shape == (50000, 3, 32, 32) and Xt.shape == (10000, 3, 32, 32)
    assert np.bincount(y).tolist() == [5000] * 10 and np.bincount(yt).tolist() == [1000] * 10
    mean = X.mean(axis=(0, 2, 3)) / 255
    std = (X / 255.0).std(axis=(0, 2, 3))
    np.testing.assert_allclose(mean, [0.4913, 0.4821, 0.4465], atol=2e-4)  # MANIFEST.md
    np.testing.assert_allclose(std, [0.2452, 0.2428, 0.2606], atol=2e-4)
    assert hashlib.sha256(X[:100].tobytes()).hexdigest() == hashlib.sha256(ds.load_cifar10(data_home=home, dtype="uint8")[0][:100].tobytes()).hexdigest()
