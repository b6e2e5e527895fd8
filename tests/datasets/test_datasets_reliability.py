"""Issue 19: file modes of downloads, in-place edits, partial files of killed downloads, CLI errors.

Everything runs on files written into tmp_path, served through file:// URLs (no network).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import spred.datasets as ds
from spred.cli import main
from spred.datasets import _base, _registry
from spred.datasets._registry import DataFile, DatasetInfo

posix_only = pytest.mark.skipif(os.name != "posix", reason="umask, pids and SIGKILL are POSIX")


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def _idx(array: np.ndarray) -> bytes:
    head = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return gzip.compress(head + array.astype(np.uint8).tobytes(), mtime=0)


@pytest.fixture
def toy_idx(tmp_path, monkeypatch):
    """A registered two-file gzip idx dataset 'toy_idx' in tmp_path/home, and its files served from tmp_path/src."""
    images = np.arange(6 * 64, dtype=np.uint8).reshape(6, 8, 8)
    files = {"toy/images.gz": _idx(images), "toy/labels.gz": _idx(np.array([0, 1, 0, 1, 1, 0]))}
    src = tmp_path / "src"
    for rel, data in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    info = DatasetInfo(
        name="toy_idx", title="toy", kind="images", format="idx",
        files=tuple(DataFile(rel, _sha(data), len(data), ((src / rel).as_uri(),)) for rel, data in files.items()),
        n_samples=6, n_features=64, classes=(("0", 3), ("1", 3)), label_source="t", provenance="t", licence="t",
    )  # fmt: skip
    monkeypatch.setitem(_registry._BY_NAME, "toy_idx", info)
    return tmp_path / "home", src, files


def _flip_in_place(path, offset):
    """Change one byte without changing the size, then put the old access and modification times back."""
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    with open(path, "r+b") as f:
        f.write(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_mtime_ns == st.st_mtime_ns and path.stat().st_size == st.st_size


# --------------------------------------------------------------------------- file modes


@posix_only
@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_downloaded_file_mode_follows_the_umask(tmp_path, umask):
    src = tmp_path / "a.bin"
    src.write_bytes(b"spred data")
    old = os.umask(umask)
    try:
        dest = ds.fetch_file(src.as_uri(), tmp_path / "shared" / "a.bin", _sha(b"spred data"))
    finally:
        os.umask(old)
    assert dest.stat().st_mode & 0o777 == 0o666 & ~umask  # as a plain open() would: readable by the group


# --------------------------------------------------------------------------- in-place edits


@pytest.mark.parametrize("fresh", [True, False], ids=["edited-right-after-hashing", "edited-later"])
def test_in_place_edit_keeping_size_and_mtime_raises_checksum_error(toy_idx, monkeypatch, fresh):
    home, _, files = toy_idx
    ds.fetch_dataset("toy_idx", data_home=home, progress=False)
    if not fresh:  # remembered by this process; the edit comes in a later tick of the file-system clock
        monkeypatch.setattr(_base, "_RACY_NS", 0, raising=False)
    assert ds.load_dataset("toy_idx", data_home=home).data.shape == (6, 64)
    time.sleep(0.05)
    target = home / "toy/images.gz"
    _flip_in_place(target, len(files["toy/images.gz"]) // 2)
    pattern = rf"Checksum mismatch for file '{re.escape(str(target))}': expected sha256 {_sha(files['toy/images.gz'])}"
    with pytest.raises(ds.ChecksumError, match=pattern):  # not a zlib error from the reader
        ds.load_dataset("toy_idx", data_home=home)


def test_a_parse_error_hashes_the_files_again(toy_idx):
    # Whatever a file system's clock does, a file that no longer parses is hashed before the reader's error is shown.
    home, _, files = toy_idx
    ds.fetch_dataset("toy_idx", data_home=home, progress=False)
    target = home / "toy/labels.gz"
    _flip_in_place(target, len(files["toy/labels.gz"]) // 2)
    for rel, data in files.items():  # this process wrongly believes both files verified
        key, _ = _base._cache_key(home / rel)
        _base._VERIFIED[key] = (_sha(data), None)
    with pytest.raises(ds.ChecksumError, match=rf"Checksum mismatch for file '{re.escape(str(target))}'") as info:
        ds.load_dataset("toy_idx", data_home=home)
    assert info.value.__cause__ is not None  # the reader's own error is kept as the cause


def test_a_parse_error_of_an_intact_file_is_the_readers_error(toy_idx, monkeypatch):
    home, _, _ = toy_idx
    ds.fetch_dataset("toy_idx", data_home=home, progress=False)
    monkeypatch.setattr("spred.datasets._readers._read_idx", lambda path: (_ for _ in ()).throw(ValueError("bad idx")))
    with pytest.raises(ValueError, match="^bad idx$"):
        ds.load_dataset("toy_idx", data_home=home)


# --------------------------------------------------------------------------- partial files of killed downloads


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@posix_only
def test_partial_files_of_dead_downloads_are_removed_and_live_ones_kept(tmp_path):
    src = tmp_path / "toy.mat"
    src.write_bytes(b"payload")
    home = tmp_path / "home"
    home.mkdir()
    host, old = _base._HOST, time.time() - 2 * 24 * 3600
    parts = {
        f".toy.mat.{host}-{_dead_pid()}-0a1b2c3d.part": False,  # killed download on this machine
        f".toy.mat.{host}-{os.getpid()}-0a1b2c3d.part": True,  # a live download (this process)
        ".toy.mat.k2j4h5g6.part": True,  # older naming, written to recently: maybe live
        ".toy.mat.x7y8z9w0.part": False,  # older naming, untouched for two days
        ".toy.mat.otherhost-12-0a1b2c3d.part": True,  # another machine's download, recent
        f".toy.mat.x.{host}-{_dead_pid()}-0a1b2c3d.part": True,  # belongs to 'toy.mat.x', not to 'toy.mat'
    }
    for name in parts:
        (home / name).write_bytes(b"partial")
    os.utime(home / ".toy.mat.x7y8z9w0.part", (old, old))
    ds.fetch_file(src.as_uri(), home / "toy.mat", _sha(b"payload"))
    assert sorted(p.name for p in home.iterdir()) == sorted([n for n, kept in parts.items() if kept] + ["toy.mat"])


@posix_only
def test_a_download_killed_outright_leaves_a_part_that_the_next_fetch_removes(tmp_path):
    dest = tmp_path / "home" / "toy.mat"
    # _base.py needs only the standard library: load it alone, so that the child skips importing torch
    code = (
        "import importlib.util, os, signal, sys\n"
        "spec = importlib.util.spec_from_file_location('base', sys.argv[2]); base = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(base)\n"
        "cm = base.atomic_write(sys.argv[1]); f = cm.__enter__(); f.write(b'half'); f.flush()\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(dest), _base.__file__], capture_output=True)
    assert proc.returncode == -signal.SIGKILL
    (left,) = dest.parent.iterdir()
    assert re.fullmatch(rf"\.toy\.mat\.{re.escape(_base._HOST)}-\d+-[0-9a-f]+\.part", left.name)
    src = tmp_path / "src.mat"
    src.write_bytes(b"payload")
    ds.fetch_file(src.as_uri(), dest, _sha(b"payload"))
    assert [p.name for p in dest.parent.iterdir()] == ["toy.mat"]


def test_host_name_in_partial_files_is_safe():
    assert re.fullmatch(r"[A-Za-z0-9_]*", _base._HOST)


# --------------------------------------------------------------------------- CLI


def _cli(capsys, *argv):
    code = main(["datasets", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_fetch_unknown_name_is_a_one_line_error(capsys):
    code, _, err = _cli(capsys, "fetch", "mnist")
    assert code == 2
    assert err == "spred: error: Unknown dataset 'mnist'. Did you mean 'mnist_test', 'mnist_train'? " \
        "See spred.datasets.list_datasets() for all names.\n"  # fmt: skip


def test_cli_fetch_failures_are_one_line_errors(toy_idx, tmp_path, capsys):
    home, src, files = toy_idx
    # every source fails (the mirror has no such file)
    code, _, err = _cli(capsys, "--data-home", str(home), "fetch", "toy_idx", "--base-url", (tmp_path / "nowhere").as_uri())
    assert code == 2 and err.count("\n") == 1
    assert re.fullmatch(r"spred: error: Could not download 'toy/images\.gz' from any source: file://.*\n", err)
    # the mirror serves a corrupted file
    bad = tmp_path / "bad"
    (bad / "toy").mkdir(parents=True)
    (bad / "toy/images.gz").write_bytes(b"not the file")
    code, _, err = _cli(capsys, "--data-home", str(home), "fetch", "toy_idx", "--base-url", bad.as_uri())
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"spred: error: Checksum mismatch for file '{(bad / 'toy/images.gz').as_uri()}'")
    # no public URL (the CIFAR-10 zip)
    code, _, err = _cli(capsys, "--data-home", str(home), "fetch", "cifar10_test")
    assert code == 2 and err.count("\n") == 1 and "has no public URL" in err
    assert not any(p.name.endswith(".part") for p in home.rglob("*"))
    # and a good fetch still works
    code, out, _ = _cli(capsys, "--data-home", str(home), "fetch", "toy_idx")
    assert code == 0 and f"verified {home / 'toy/images.gz'}" in out
