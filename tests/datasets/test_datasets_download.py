"""Downloads against a real HTTP server on 127.0.0.1 serving files the tests write (no outside network)."""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import http.server
import io
import re
import shutil
import threading
import urllib.request

import numpy as np
import pytest
import scipy.io

import spred.datasets as ds
from spred.datasets import _base, _registry
from spred.datasets._registry import DataFile, DatasetInfo


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


class _TruncatingHandler(_QuietHandler):
    """Announces 100000 bytes, sends 1000, then closes the connection: an interrupted download."""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "100000")
        self.end_headers()
        self.wfile.write(b"x" * 1000)
        self.wfile.flush()
        self.close_connection = True


@pytest.fixture
def server(tmp_path):
    """(root folder, base URL) of a local HTTP server; the test writes the files it serves."""
    root = tmp_path / "served"
    root.mkdir()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join()


@pytest.fixture
def truncating_server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _TruncatingHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir())


# --------------------------------------------------------------------------- fetch_file


def test_fetch_file_writes_verified_file(server, tmp_path):
    root, url = server
    payload = np.random.default_rng(0).bytes(3 * (1 << 20) + 17)  # several chunks
    (root / "blob.bin").write_bytes(payload)
    dest = tmp_path / "home" / "sub" / "blob.bin"
    assert ds.fetch_file(f"{url}/blob.bin", dest, _sha(payload), progress=False) == dest
    assert dest.read_bytes() == payload
    assert _leftovers(dest.parent) == ["blob.bin"]  # no temporary file left


def test_fetch_file_with_progress_bar(server, tmp_path):
    root, url = server
    (root / "a").write_bytes(b"abc")
    dest = ds.fetch_file(f"{url}/a", tmp_path / "a", _sha(b"abc"), progress=True)
    assert dest.read_bytes() == b"abc"


def test_fetch_file_mismatch_deletes_download_and_keeps_old_file(server, tmp_path):
    root, url = server
    (root / "blob.bin").write_bytes(b"served bytes")
    dest = tmp_path / "home" / "blob.bin"
    dest.parent.mkdir()
    dest.write_bytes(b"old content")
    wrong = "0" * 64
    pattern = (
        rf"Checksum mismatch for file '{re.escape(url)}/blob\.bin': expected sha256 {wrong}, "
        rf"got {_sha(b'served bytes')}\. The download was deleted; '.*blob\.bin' was not written\."
    )
    with pytest.raises(ds.ChecksumError, match=pattern):
        ds.fetch_file(f"{url}/blob.bin", dest, wrong, progress=False)
    assert dest.read_bytes() == b"old content"
    assert _leftovers(dest.parent) == ["blob.bin"]


def test_fetch_file_interrupted_transfer_leaves_nothing(truncating_server, tmp_path):
    dest = tmp_path / "home" / "big.bin"
    msg = r"big\.bin was interrupted: received 1000 of 100000 bytes; .* was not written"
    with pytest.raises(ConnectionError, match=msg):
        ds.fetch_file(f"{truncating_server}/big.bin", dest, "0" * 64, progress=False)
    assert _leftovers(dest.parent) == []


def test_fetch_file_keyboard_interrupt_leaves_nothing(tmp_path, monkeypatch):
    class _Response(io.BytesIO):
        headers = {"Content-Length": "4000000"}

        def read(self, n=-1):
            if self.tell() >= 1 << 20:
                raise KeyboardInterrupt
            return super().read(n)

    monkeypatch.setattr(urllib.request, "urlopen", lambda req, timeout: _Response(b"y" * 4_000_000))
    dest = tmp_path / "home" / "big.bin"
    with pytest.raises(KeyboardInterrupt):
        ds.fetch_file("http://127.0.0.1:9/big.bin", dest, "0" * 64, progress=False)
    assert _leftovers(dest.parent) == []


def test_fetch_file_http_error_leaves_nothing(server, tmp_path):
    _, url = server
    dest = tmp_path / "home" / "absent.bin"
    with pytest.raises(urllib.error.HTTPError, match="404"):
        ds.fetch_file(f"{url}/absent.bin", dest, "0" * 64, progress=False)
    assert _leftovers(dest.parent) == []


def test_fetch_file_gzip_content(server, tmp_path):
    root, url = server
    text = b"@relation t\n" * 1000
    (root / "t.arff").write_bytes(text)
    dest = tmp_path / "t.arff.gz"
    ds.fetch_file(f"{url}/t.arff", dest, _sha(text), gzip_content=True, progress=False)
    assert gzip.decompress(dest.read_bytes()) == text
    ds.verify_file(dest, "f" * 64, gunzipped_sha256=_sha(text))  # accepted by its content hash
    with pytest.raises(ds.ChecksumError, match=r"expected sha256 f{64}"):
        ds.verify_file(dest, "f" * 64, gunzipped_sha256="e" * 64)


# --------------------------------------------------------------------------- datasets, through the registry


@pytest.fixture
def toy_dataset(tmp_path, monkeypatch):
    """Register a small .mat dataset and a gzip-recompressed ARFF one, with files the test can serve."""
    X = np.arange(20, dtype=np.uint8).reshape(5, 4)
    buf = io.BytesIO()
    scipy.io.savemat(buf, {"X": X, "Y": np.array([[1], [2], [1], [2], [2]], dtype=np.uint8)})
    mat = buf.getvalue()
    arff = b"@relation t\n@attribute g numeric\n@attribute c {a,b}\n@data\n1,a\n2,b\n3,b\n"
    arff_gz = gzip.compress(arff, mtime=0)
    files = {"toy/toy.mat": mat, "toy/toy.arff.gz": arff_gz, "toy/toy.arff": arff}

    def info(name, fmt, file, classes, n, d):
        return DatasetInfo(
            name=name, title=name, kind="other", format=fmt, files=(file,), n_samples=n, n_features=d,
            classes=classes, label_source="test", provenance="test", licence="test",
        )  # fmt: skip

    entries = {
        "toy_mat": info("toy_mat", "mat", DataFile("toy/toy.mat", _sha(mat), len(mat)), (("1", 2), ("2", 3)), 5, 4),
        "toy_arff": info(
            "toy_arff", "arff", DataFile("toy/toy.arff.gz", _sha(arff_gz), len(arff_gz), gunzipped_sha256=_sha(arff)),
            (("a", 1), ("b", 2)), 3, 1,
        ),
    }  # fmt: skip
    for name, entry in entries.items():
        monkeypatch.setitem(_registry._BY_NAME, name, entry)
    return files, entries


def _serve(root, files):
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)


def _with_urls(monkeypatch, entry, urls):
    f = entry.files[0]
    file = DataFile(f.path, f.sha256, f.size, tuple(urls), f.gunzipped_sha256)
    new = dataclasses.replace(entry, files=(file,))
    monkeypatch.setitem(_registry._BY_NAME, entry.name, new)
    return new


def test_load_dataset_download_from_mirror(server, tmp_path, toy_dataset):
    root, url = server
    files, _ = toy_dataset
    _serve(root, files)
    home = tmp_path / "home"
    msg = r"'toy/toy\.mat' not found .* \(from the data_home argument\)\. .* no public URL"
    with pytest.raises(ds.DatasetNotFoundError, match=msg):
        ds.load_dataset("toy_mat", data_home=home)
    b = ds.load_dataset("toy_mat", data_home=home, download=True, base_url=url + "/")
    assert b.data.shape == (5, 4) and b.target.tolist() == [0, 1, 0, 1, 1]
    assert (home / "toy/toy.mat").read_bytes() == files["toy/toy.mat"]
    # present now: no second download needed
    shutil.rmtree(root / "toy")
    assert ds.load_dataset("toy_mat", data_home=home).data.shape == (5, 4)


def test_public_url_of_uncompressed_blob_is_gzipped_locally(server, tmp_path, toy_dataset, monkeypatch):
    root, url = server
    files, entries = toy_dataset
    _serve(root, files)
    _with_urls(monkeypatch, entries["toy_arff"], [f"{url}/toy/toy.arff"])
    home = tmp_path / "home"
    paths = ds.fetch_dataset("toy_arff", data_home=home, progress=False)
    assert paths == [home / "toy/toy.arff.gz"]
    assert gzip.decompress(paths[0].read_bytes()) == files["toy/toy.arff"]
    b = ds.load_dataset("toy_arff", data_home=home)
    assert b.target_names.tolist() == ["a", "b"] and b.target.tolist() == [0, 1, 1]


def test_next_mirror_is_tried_after_a_network_error(server, tmp_path, toy_dataset, monkeypatch):
    root, url = server
    files, entries = toy_dataset
    _serve(root, files)
    _with_urls(monkeypatch, entries["toy_mat"], [f"{url}/gone/toy.mat", f"{url}/toy/toy.mat"])
    home = tmp_path / "home"
    with pytest.raises(ds.DatasetNotFoundError, match=r"or pass download=True to fetch it from 127\.0\.0\.1"):
        ds.load_dataset("toy_mat", data_home=home)
    assert ds.load_dataset("toy_mat", data_home=home, download=True).data.shape == (5, 4)


def test_all_sources_failing_raises_listing_each(server, tmp_path, toy_dataset, monkeypatch):
    _, url = server
    _, entries = toy_dataset
    _with_urls(monkeypatch, entries["toy_mat"], [f"{url}/a/toy.mat", f"{url}/b/toy.mat"])
    home = tmp_path / "home"
    msg = r"Could not download 'toy/toy\.mat' from any source: .*/a/toy\.mat: HTTP Error 404[^;]*; .*/b/toy\.mat"
    with pytest.raises(OSError, match=msg):
        ds.fetch_dataset("toy_mat", data_home=home, progress=False)
    assert _leftovers(home / "toy") == []


def test_no_url_and_no_mirror_cannot_download(tmp_path, toy_dataset):
    msg = r"File 'toy/toy\.mat' has no public URL and is not at .*copy it there by hand"
    with pytest.raises(ds.DatasetNotFoundError, match=msg):
        ds.load_dataset("toy_mat", data_home=tmp_path, download=True)


def test_mirror_serving_a_corrupted_file(server, tmp_path, toy_dataset):
    root, url = server
    files, _ = toy_dataset
    bad = bytearray(files["toy/toy.mat"])
    bad[200] ^= 0xFF
    _serve(root, {"toy/toy.mat": bytes(bad)})
    home = tmp_path / "home"
    expected = _sha(files["toy/toy.mat"])
    with pytest.raises(ds.ChecksumError, match=rf"toy/toy\.mat': expected sha256 {expected}, got {_sha(bytes(bad))}"):
        ds.fetch_dataset("toy_mat", data_home=home, base_url=url, progress=False)
    assert _leftovers(home / "toy") == []


def test_force_downloads_again(server, tmp_path, toy_dataset):
    root, url = server
    files, _ = toy_dataset
    _serve(root, files)
    home = tmp_path / "home"
    ds.fetch_dataset("toy_mat", data_home=home, base_url=url, progress=False)
    target = home / "toy/toy.mat"
    target.write_bytes(b"broken")
    with pytest.raises(ds.ChecksumError, match="delete it and load again with download=True"):
        ds.load_dataset("toy_mat", data_home=home, download=True, base_url=url)
    ds.fetch_dataset("toy_mat", data_home=home, base_url=url, force=True, progress=False)
    assert target.read_bytes() == files["toy/toy.mat"]


@pytest.mark.data
def test_fetch_real_dataset_from_local_mirror(server, tmp_path, data_home):
    """The registry's own files and hashes, served from 127.0.0.1 with the data folder's layout."""
    root, url = server
    for name in ("colon", "mnist_test", "SRBCT"):
        _serve(root, {f.path: (data_home / f.path).read_bytes() for f in ds.dataset_info(name).files})
    home = tmp_path / "home"
    for name in ("colon", "mnist_test", "SRBCT"):
        got = ds.load_dataset(name, data_home=home, download=True, base_url=url)
        ref = ds.load_dataset(name, data_home=data_home)
        np.testing.assert_array_equal(got.data, ref.data)
        np.testing.assert_array_equal(got.target, ref.target)
    assert _base.sha256_file(home / "mnist/t10k-images-idx3-ubyte.gz") == ds.dataset_info("mnist_test").files[0].sha256
