"""Every registered dataset loads from SPRED_DATA with the manifest's shape and class counts.

Skipped (by the ``data_home`` fixture, with a message) when SPRED_DATA does not point at the data.
Corruption tests copy files into tmp_path; the shared data folder is never modified.
"""

from __future__ import annotations

import gzip
import re
import shutil
import time

import numpy as np
import pytest

import spred.datasets as ds
from spred.datasets import _base
from spred.datasets._registry import REGISTRY

pytestmark = pytest.mark.data

NAMES = [info.name for info in REGISTRY]
# Decoding the 60,000 CIFAR-10 JPEGs takes 15 s or more the first time: those entries run with -m slow
# (test_datasets_cifar.py checks the zip quickly).
LOADABLE = [pytest.param(n, marks=pytest.mark.slow) if n.startswith("cifar10") else n for n in NAMES]


def _copy_dataset(name, src_home, dst_home):
    for f in ds.dataset_info(name).files:
        dst = dst_home / f.path
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src_home / f.path, dst)


def _flip_byte(path, offset):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("name", LOADABLE)
def test_loads_with_manifest_shape_and_classes(name, data_home):
    info = ds.dataset_info(name)
    b = ds.load_dataset(name, data_home=data_home)
    assert b.data.shape == info.shape
    assert b.data.dtype == np.float32 and b.data.flags.c_contiguous
    assert np.isfinite(b.data).all()
    assert b.target.dtype == np.int64 and b.target.shape == (info.n_samples,)
    assert tuple(np.bincount(b.target, minlength=info.n_classes)) == info.class_counts
    assert tuple(b.target_names) == info.target_names
    assert b.name == info.name and b.info is info
    assert info.title in b.DESCR and info.licence in b.DESCR
    if b.feature_names is not None:
        assert b.feature_names.shape == (info.n_features,)
    X, y = ds.load_dataset(name, data_home=data_home, return_X_y=True)
    np.testing.assert_array_equal(X, b.data)
    np.testing.assert_array_equal(y, b.target)


def test_mat_values_are_the_files_values(data_home):
    import scipy.io

    d = scipy.io.loadmat(data_home / "scikit_feature" / "colon.mat")
    b = ds.load_dataset("colon", data_home=data_home)
    np.testing.assert_array_equal(b.data, d["X"].astype(np.float32))
    np.testing.assert_array_equal(b.target, (d["Y"].ravel() == 1).astype(np.int64))  # -1 -> 0, 1 -> 1
    assert set(np.unique(b.data)) <= {-2, -1, 0, 1, 2}  # discretised, as the manifest says
    allaml = ds.load_dataset("ALLAML", data_home=data_home)
    raw = scipy.io.loadmat(data_home / "scikit_feature/ALLAML.mat")["Y"].ravel()
    np.testing.assert_array_equal(allaml.target, raw - 1)  # 1..K -> 0..K-1


def test_arff_matches_the_manifest_recipe(data_home):
    from scipy.io import arff

    data, meta = arff.loadarff(gzip.open(data_home / "biolab_arff/01_leukemia.arff.gz", "rt"))
    X = np.column_stack([data[n] for n, t in zip(meta.names(), meta.types()) if t == "numeric"])
    b = ds.load_dataset("leukemia_biolab", data_home=data_home)
    np.testing.assert_array_equal(b.data, X.astype(np.float32))
    assert b.feature_names[0] == meta.names()[0] and "a1_gene" not in b.feature_names  # class declared last
    classes = np.array([v.decode() for v in data["a1_gene"]])
    np.testing.assert_array_equal(b.target_names[b.target], classes)


def test_gds507_labels_come_from_disease_state_only(data_home):
    b = ds.load_dataset("GDS507", data_home=data_home)
    assert b.subset_type == "disease state" and b.dropped_samples == [] and b.n_dropped_features == 0
    assert b.value_type == "count" and b.title == "Renal clear cell carcinoma (HG-U133B)"
    assert b.sample_ids[:2].tolist() == ["GSM11815", "GSM11832"]
    rcc = {"GSM11815", "GSM11832", "GSM12069", "GSM12083", "GSM12101", "GSM12106", "GSM12274", "GSM12299", "GSM12412"}
    assert {s for s, t in zip(b.sample_ids, b.target_names[b.target]) if t == "RCC"} == rcc
    assert b.feature_names[0] == "200000_s_at" and b.identifiers[0] == "PRPF8"
    assert len(set(b.feature_names)) == b.data.shape[1]  # probe ids are unique, gene symbols are not
    assert len(set(b.identifiers)) < b.data.shape[1]
    np.testing.assert_allclose(b.data[:3, 0], [4254.0, 5298.2, 4026.5], rtol=1e-6)
    # the 'individual' subsets (patients) are another subset type: one class per patient
    ind = ds.read_gds_soft(data_home / "geo_soft/GDS507.soft.gz", subset_type="individual")
    assert ind.data.shape == (17, 22645) and len(ind.target_names) == 10


def test_mnist_api(data_home):
    X, y = ds.load_mnist(data_home, train=True)
    assert X.shape == (60000, 28, 28) and X.dtype == np.float32 and y.dtype == np.int64
    assert X.min() == 0.0 and X.max() == 1.0
    Xt, yt = ds.load_mnist(data_home, train=False, flatten=True)
    assert Xt.shape == (10000, 784)
    raw = ds.read_idx(data_home / "mnist/t10k-images-idx3-ubyte.gz")
    np.testing.assert_array_equal(Xt, raw.reshape(10000, -1) / np.float32(255))
    np.testing.assert_array_equal(yt, ds.read_idx(data_home / "mnist/t10k-labels-idx1-ubyte.gz"))
    b = ds.load_dataset("mnist_test", data_home=data_home)
    assert b.images.shape == (10000, 28, 28) and np.shares_memory(b.images, b.data)


def test_fashion_subset_labels_are_the_first_2000_official_ones(data_home):
    X, y = ds.load_fashion_mnist_subset(data_home)
    assert X.shape == (2000, 28, 28) and 0.0 <= X.min() and X.max() <= 1.0
    official = ds.read_idx(data_home / "fashion_mnist_subset/t10k-labels-idx1-ubyte.gz")
    assert official.shape == (10000,)
    np.testing.assert_array_equal(y, official[:2000])
    assert ds.load_dataset("fashion_mnist_subset", data_home=data_home).target_names[9] == "Ankle boot"


# --------------------------------------------------------------------------- load times


def _best_time(fn, repeats=2):
    """Best CPU time of a few cold loads (CPU, not wall time: the test machine is shared and busy)."""
    times = []
    for _ in range(repeats):
        _base._VERIFIED.clear()  # include the sha256 check, as a first load in a process would
        t = time.process_time()
        fn()
        times.append(time.process_time() - t)
    return min(times)


@pytest.mark.parametrize("name", ds.list_datasets(kind="gene expression"))
def test_gene_expression_loads_under_2s(name, data_home):
    assert _best_time(lambda: ds.load_dataset(name, data_home=data_home)) < 2.0


def test_mnist_loads_under_3s(data_home):
    assert _best_time(lambda: ds.load_mnist(data_home, train=True)) < 3.0


# --------------------------------------------------------------------------- verification


def test_checksum_is_cached_per_process(data_home, tmp_path, monkeypatch):
    _copy_dataset("colon", data_home, tmp_path)
    # The copy was just written; files changed within a second of their hashing are not
    # remembered (a later edit in the same clock tick could keep every time stamp).
    monkeypatch.setattr(_base, "_RACY_NS", 0)
    calls = []
    real = _base.sha256_file
    monkeypatch.setattr(_base, "sha256_file", lambda p: calls.append(p) or real(p))
    ds.load_dataset("colon", data_home=tmp_path)
    ds.load_dataset("colon", data_home=tmp_path)
    assert len(calls) == 1
    # an edited file is hashed again, and caught
    _flip_byte(tmp_path / "scikit_feature/colon.mat", 1000)
    with pytest.raises(ds.ChecksumError):
        ds.load_dataset("colon", data_home=tmp_path)
    assert len(calls) == 2


@pytest.mark.parametrize(
    ("name", "relpath", "offset"),
    [
        ("colon", "scikit_feature/colon.mat", 5000),
        ("SRBCT", "biolab_arff/02_SRBCT.arff.gz", 100000),  # gz with a content hash: both checks fail
        ("mnist_test", "mnist/t10k-labels-idx1-ubyte.gz", 50),  # the second file of a dataset
        ("GDS507", "geo_soft/GDS507.soft.gz", 3),  # inside the gzip header: still a valid stream
    ],
)
def test_corrupted_file_raises_checksum_error_naming_it(name, relpath, offset, data_home, tmp_path):
    _copy_dataset(name, data_home, tmp_path)
    target = tmp_path / relpath
    _flip_byte(target, offset)
    expected = next(f.sha256 for f in ds.dataset_info(name).files if f.path == relpath)
    actual = _base.sha256_file(target)
    pattern = rf"Checksum mismatch for file '{re.escape(str(target))}': expected sha256 {expected}, got {actual}\."
    with pytest.raises(ds.ChecksumError, match=pattern) as exc_info:
        ds.load_dataset(name, data_home=tmp_path)
    assert exc_info.value.path == str(target)
    assert (exc_info.value.expected, exc_info.value.actual) == (expected, actual)


def test_missing_file_says_where_it_looked_and_how_to_set_spred_data(tmp_path, monkeypatch):
    monkeypatch.setenv("SPRED_DATA", str(tmp_path))
    where = re.escape(str(tmp_path / "scikit_feature" / "ALLAML.mat"))
    pattern = (
        rf"Dataset 'ALLAML': file 'scikit_feature/ALLAML.mat' not found at '{where}'\. "
        rf"spred looked in the data folder '{re.escape(str(tmp_path))}' \(from the SPRED_DATA environment variable\)\. "
        r"Set the SPRED_DATA environment variable to the folder that holds the data .*"
        r"or pass download=True to fetch it from raw\.githubusercontent\.com"
    )
    with pytest.raises(ds.DatasetNotFoundError, match=pattern) as exc_info:
        ds.load_dataset("ALLAML")
    assert isinstance(exc_info.value, FileNotFoundError)
    assert exc_info.value.filename == str(tmp_path / "scikit_feature" / "ALLAML.mat")


def test_missing_second_file_is_reported(data_home, tmp_path):
    _copy_dataset("mnist_test", data_home, tmp_path)
    (tmp_path / "mnist/t10k-labels-idx1-ubyte.gz").unlink()
    msg = r"file 'mnist/t10k-labels-idx1-ubyte\.gz' not found .*data_home argument"
    with pytest.raises(ds.DatasetNotFoundError, match=msg):
        ds.load_dataset("mnist_test", data_home=tmp_path)


def test_gz_with_content_hash_accepts_a_recompressed_copy(data_home, tmp_path):
    # A download of a biolab file compresses the source blob locally: other gzip bytes, same content.
    _copy_dataset("SRBCT", data_home, tmp_path)
    target = tmp_path / "biolab_arff/02_SRBCT.arff.gz"
    target.write_bytes(gzip.compress(gzip.decompress(target.read_bytes()), compresslevel=1, mtime=0))
    assert _base.sha256_file(target) != ds.dataset_info("SRBCT").files[0].sha256
    b = ds.load_dataset("SRBCT", data_home=tmp_path)
    assert b.data.shape == (83, 2308)


@pytest.mark.parametrize("name", [n for n in NAMES if ds.dataset_info(n).format == "arff"])
def test_arff_fast_path_equals_scipy_on_real_files(name, data_home):
    from spred.datasets import _readers

    text = gzip.decompress((data_home / ds.dataset_info(name).files[0].path).read_bytes()).decode()
    fast, slow = _readers._arff_dense(text), _readers._arff_scipy(text)
    assert fast is not None, "the staged biolab files should take the fast path"
    assert fast[:2] == slow[:2]
    np.testing.assert_array_equal(fast[2].astype(np.float32), slow[2])
    np.testing.assert_array_equal(fast[3], slow[3])
