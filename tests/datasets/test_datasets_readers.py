"""Format readers on small files written by the tests (no real data needed)."""

from __future__ import annotations

import gzip
import pickle

import numpy as np
import pytest
import scipy.io
import scipy.sparse

import spred.datasets as ds
from spred.datasets._readers import encode_labels

# --------------------------------------------------------------------------- labels


def test_encode_labels_sorts_numbers_numerically_and_strings_lexicographically():
    y, names = encode_labels(np.array([10, 2, -1, 2]))
    assert y.tolist() == [2, 1, 0, 1] and names.tolist() == ["-1", "2", "10"] and y.dtype == np.int64
    y, names = encode_labels(np.array([1.0, 3.0, 1.0]))
    assert names.tolist() == ["1", "3"]
    y, names = encode_labels(np.array(["tumor", "normal", "Normal"]))
    assert names.tolist() == ["Normal", "normal", "tumor"] and y.tolist() == [2, 1, 0]


# --------------------------------------------------------------------------- .mat


@pytest.mark.parametrize(
    ("labels", "expected", "names"),
    [([-1, 1, 1, -1], [0, 1, 1, 0], ["-1", "1"]), ([3, 1, 2, 3], [2, 0, 1, 2], ["1", "2", "3"])],
)
def test_read_mat(tmp_path, labels, expected, names):
    X = np.arange(12, dtype=np.int16).reshape(4, 3)
    scipy.io.savemat(tmp_path / "d.mat", {"X": X, "Y": np.array(labels, dtype=np.int16)[:, None]})
    b = ds.read_mat(tmp_path / "d.mat")
    assert b.data.dtype == np.float32 and b.data.flags.c_contiguous
    np.testing.assert_array_equal(b.data, X)
    assert b.target.tolist() == expected and b.target_names.tolist() == names and b.feature_names is None


def test_read_mat_sparse_x(tmp_path):
    X = scipy.sparse.random(5, 4, density=0.5, format="csc", random_state=0)
    scipy.io.savemat(tmp_path / "s.mat", {"X": X, "Y": np.arange(5)[:, None]})
    np.testing.assert_allclose(ds.read_mat(tmp_path / "s.mat").data, X.toarray(), rtol=1e-6)


def test_read_mat_errors(tmp_path):
    scipy.io.savemat(tmp_path / "a.mat", {"X": np.eye(3)})
    with pytest.raises(ValueError, match=r"has no variable\(s\) \['Y'\]"):
        ds.read_mat(tmp_path / "a.mat")
    scipy.io.savemat(tmp_path / "b.mat", {"X": np.eye(3), "Y": np.ones((2, 1))})
    with pytest.raises(ValueError, match=r"X has shape \(3, 3\) but Y has 2 labels"):
        ds.read_mat(tmp_path / "b.mat")


# --------------------------------------------------------------------------- ARFF

ARFF = """% a comment
@relation toy
@attribute a1_class {'tumor','normal'}
@attribute g1 numeric
@attribute g2 numeric
@attribute g3 numeric
@data
'tumor',1.5,2,3
'normal',-1,0.25,?
'tumor',4,5,6
"""


@pytest.mark.parametrize("compressed", [False, True])
def test_read_arff_class_first_plain_and_gz(tmp_path, compressed):
    path = tmp_path / ("t.arff.gz" if compressed else "t.arff")
    path.write_bytes(gzip.compress(ARFF.encode()) if compressed else ARFF.encode())
    b = ds.read_arff(path)
    assert b.data.shape == (3, 3) and b.data.dtype == np.float32
    np.testing.assert_array_equal(b.data[0], [1.5, 2, 3])
    assert np.isnan(b.data[1, 2])  # '?' stays missing
    assert b.feature_names.tolist() == ["g1", "g2", "g3"] and b.class_attribute == "a1_class"
    assert b.target_names.tolist() == ["normal", "tumor"] and b.target.tolist() == [1, 0, 1]


def test_read_arff_class_last(tmp_path):
    (tmp_path / "t.arff").write_text("@relation t\n@attribute x numeric\n@attribute c {B,A}\n@data\n1,B\n2,A\n")
    b = ds.read_arff(tmp_path / "t.arff")
    assert b.data.ravel().tolist() == [1.0, 2.0] and b.target.tolist() == [1, 0]


def test_read_arff_errors(tmp_path):
    (tmp_path / "two.arff").write_text(
        "@relation t\n@attribute x numeric\n@attribute c {a,b}\n@attribute d {u,v}\n@data\n1,a,u\n"
    )
    with pytest.raises(ValueError, match=r"expected exactly one nominal \(class\) attribute, found 2: \['c', 'd'\]"):
        ds.read_arff(tmp_path / "two.arff")
    (tmp_path / "miss.arff").write_text("@relation t\n@attribute x numeric\n@attribute c {a,b}\n@data\n1,a\n2,?\n")
    with pytest.raises(ValueError, match=r"1 sample\(s\) have a missing class"):
        ds.read_arff(tmp_path / "miss.arff")


# --------------------------------------------------------------------------- GEO SOFT (GDS)


def _soft(subsets, table, columns=None):
    """A small GDS SOFT text: subsets = [(description, type, samples)], table = [(id, symbol, values...)]."""
    samples = columns or [s for _, _, ss in subsets for s in ss]
    samples = list(dict.fromkeys(samples))
    lines = ["^DATABASE = Geo", "^DATASET = GDS9", "!dataset_title = Toy", "!dataset_value_type = transformed count"]
    for k, (desc, typ, ss) in enumerate(subsets, 1):
        lines += [f"^SUBSET = GDS9_{k}", "!subset_dataset_id = GDS9", f"!subset_description = {desc}",
                  f"!subset_sample_id = {','.join(ss)}", f"!subset_type = {typ}"]  # fmt: skip
    lines += ["^DATASET = GDS9", "#ID_REF = Platform reference identifier", "!dataset_table_begin"]
    lines.append("\t".join(["ID_REF", "IDENTIFIER", *samples]))
    lines += ["\t".join(map(str, row)) for row in table]
    lines += ["!dataset_table_end", ""]
    return "\n".join(lines)


SUBSETS = [
    ("tumour", "disease state", ["GSM1", "GSM2"]),
    ("normal", "disease state", ["GSM3", "GSM4"]),
    ("p1", "individual", ["GSM1", "GSM3"]),
    ("p2", "individual", ["GSM2", "GSM4"]),
]
TABLE = [
    ("1_at", "TP53", 1.0, 2.0, 3.0, 4.0),
    ("2_at", "MYC", 5, "null", 7, 8),
    ("3_at", "TP53", 9, 10, "", 12),
    ("4_at", "EGFR", -1.5, 0, 1e3, 2.5),
]


@pytest.mark.parametrize("compressed", [False, True])
def test_read_gds_soft_uses_one_subset_type(tmp_path, compressed):
    text = _soft(SUBSETS, TABLE)
    path = tmp_path / ("g.soft.gz" if compressed else "g.soft")
    path.write_bytes(gzip.compress(text.encode()) if compressed else text.encode())
    b = ds.read_gds_soft(path)
    # 'individual' subsets are ignored: every sample has exactly one label
    assert b.sample_ids.tolist() == ["GSM1", "GSM2", "GSM3", "GSM4"]
    assert b.target_names.tolist() == ["normal", "tumour"] and b.target.tolist() == [1, 1, 0, 0]
    # probes with a missing value ('null', empty) are dropped
    assert b.feature_names.tolist() == ["1_at", "4_at"] and b.identifiers.tolist() == ["TP53", "EGFR"]
    assert b.n_dropped_features == 2 and b.dropped_samples == []
    np.testing.assert_array_equal(b.data, np.array([[1, 2, 3, 4], [-1.5, 0, 1e3, 2.5]], dtype=np.float32).T)
    assert b.value_type == "transformed count" and b.title == "Toy"
    other = ds.read_gds_soft(path, subset_type="Individual")  # case-insensitive
    assert other.target_names.tolist() == ["p1", "p2"] and other.target.tolist() == [0, 1, 0, 1]


def test_read_gds_soft_missing_keep(tmp_path):
    (tmp_path / "g.soft").write_text(_soft(SUBSETS, TABLE))
    b = ds.read_gds_soft(tmp_path / "g.soft", missing="keep")
    assert b.data.shape == (4, 4) and b.n_dropped_features == 0
    assert np.isnan(b.data[1, 1]) and np.isnan(b.data[2, 2]) and np.isnan(b.data).sum() == 2


def test_read_gds_soft_missing_counts_only_kept_samples(tmp_path):
    # GSM5 is in no disease-state subset: it is dropped (with a warning) and its missing value does not matter
    subsets = SUBSETS[:2] + [("p3", "individual", ["GSM5"])]
    table = [("1_at", "A", 1, 2, 3, 4, "null"), ("2_at", "B", 5, 6, 7, 8, 9)]
    (tmp_path / "g.soft").write_text(_soft(subsets, table))
    msg = r"1 of 5 samples of g\.soft are in no subset of type 'disease state' and were dropped: GSM5\."
    with pytest.warns(UserWarning, match=msg):
        b = ds.read_gds_soft(tmp_path / "g.soft")
    assert b.dropped_samples == ["GSM5"] and b.sample_ids.tolist() == ["GSM1", "GSM2", "GSM3", "GSM4"]
    assert b.data.shape == (4, 2) and b.n_dropped_features == 0


def test_read_gds_soft_sample_in_two_subsets_of_the_type_is_an_error(tmp_path):
    subsets = [("tumour", "disease state", ["GSM1", "GSM2"]), ("normal", "disease state", ["GSM2", "GSM3"])]
    (tmp_path / "g.soft").write_text(_soft(subsets, [("1_at", "A", 1, 2, 3)]))
    msg = r"sample GSM2 is in two subsets of type 'disease state' \('tumour' and 'normal'\)"
    with pytest.raises(ValueError, match=msg):
        ds.read_gds_soft(tmp_path / "g.soft")


def test_read_gds_soft_errors(tmp_path):
    good = _soft(SUBSETS, TABLE)
    (tmp_path / "g.soft").write_text(good)
    msg = r"The 'missing' parameter of read_gds_soft must be one of \('drop', 'keep'\)\. Got 'median'"
    with pytest.raises(ValueError, match=msg):
        ds.read_gds_soft(tmp_path / "g.soft", missing="median")
    msg = r"no subset of type 'agent'; subset types present: \['disease state', 'individual'\]"
    with pytest.raises(ValueError, match=msg):
        ds.read_gds_soft(tmp_path / "g.soft", subset_type="agent")
    (tmp_path / "notable.soft").write_text(good.replace("!dataset_table_end", ""))
    with pytest.raises(ValueError, match=r"no complete '!dataset_table_begin' \.\.\. '!dataset_table_end' table"):
        ds.read_gds_soft(tmp_path / "notable.soft")
    (tmp_path / "cols.soft").write_text(good.replace("ID_REF\tIDENTIFIER", "ID\tSYMBOL"))
    with pytest.raises(ValueError, match=r"must start with columns ID_REF, IDENTIFIER; got \['ID', 'SYMBOL'\]"):
        ds.read_gds_soft(tmp_path / "cols.soft")
    (tmp_path / "short.soft").write_text(good.replace("4_at\tEGFR\t-1.5\t", "4_at\tEGFR\t"))
    with pytest.raises(ValueError, match=r"table row 4 \('4_at'\) has 5 fields, the header has 6"):
        ds.read_gds_soft(tmp_path / "short.soft")
    (tmp_path / "text.soft").write_text(good.replace("\t1000.0\t", "\thigh\t"))
    with pytest.raises(ValueError, match=r"holds a value that is not a number"):
        ds.read_gds_soft(tmp_path / "text.soft")
    nobody = _soft([("x", "disease state", ["GSM8"])], [("1_at", "A", 1)], columns=["GSM1"])
    (tmp_path / "nobody.soft").write_text(nobody)
    with pytest.warns(UserWarning, match="were dropped"):
        with pytest.raises(ValueError, match=r"no sample of the table is in a subset"):
            ds.read_gds_soft(tmp_path / "nobody.soft")


# --------------------------------------------------------------------------- idx


def _idx(array: np.ndarray, code: int) -> bytes:
    header = bytes([0, 0, code, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


@pytest.mark.parametrize(
    ("dtype", "code"),
    [(np.uint8, 0x08), (np.int8, 0x09), (np.int16, 0x0B), (np.int32, 0x0C), (np.float32, 0x0D), (np.float64, 0x0E)],
)
def test_read_idx_round_trip(tmp_path, rng, dtype, code):
    a = (rng.normal(size=(3, 4, 5)) * 50).astype(dtype)
    (tmp_path / "a.idx").write_bytes(_idx(a, code))
    (tmp_path / "a.idx.gz").write_bytes(gzip.compress(_idx(a, code)))
    for name in ("a.idx", "a.idx.gz"):
        out = ds.read_idx(tmp_path / name)
        assert out.shape == a.shape and out.dtype == np.dtype(dtype) and out.dtype.isnative
        np.testing.assert_array_equal(out, a)
        assert out.flags.writeable


def test_read_idx_errors(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x1f\x00\x08\x01\x00\x00\x00\x01\x07")
    with pytest.raises(ValueError, match=r"is not an idx file \(bad magic number 1f000801\)"):
        ds.read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(bytes([0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 2, 1, 2, 3]))
    with pytest.raises(ValueError, match=r"says shape \(2, 2\) \(4 bytes of data\) but the file holds 3 bytes"):
        ds.read_idx(tmp_path / "short")


# --------------------------------------------------------------------------- CIFAR-10 python batches


def _write_cifar(root, rng, n_per_batch=4, protocol=2, str_keys=False):
    """The format of cifar-10-batches-py: pickled dicts with bytes keys (written by Python 2)."""
    root.mkdir(parents=True, exist_ok=True)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(n_per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n_per_batch).tolist()
        d = {"batch_label": name, "data": data, "labels": labels, "filenames": [f"{i}.png" for i in range(n_per_batch)]}
        if not str_keys:
            d = {k.encode(): (v.encode() if isinstance(v, str) else v) for k, v in d.items()}
        (root / name).write_bytes(pickle.dumps(d, protocol=protocol))
        batches[name] = (data, labels)
    (root / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"airplane"] * 10}, protocol=2))
    return batches


@pytest.mark.parametrize("protocol", [2, 5])
def test_load_cifar10(tmp_path, rng, protocol):
    batches = _write_cifar(tmp_path / "cifar-10-batches-py", rng, protocol=protocol)
    X, y = ds.load_cifar10(tmp_path)  # the parent folder works too
    assert X.shape == (20, 3, 32, 32) and X.dtype == np.float32 and y.dtype == np.int64
    expected = np.concatenate([batches[f"data_batch_{i}"][0] for i in range(1, 6)])
    np.testing.assert_array_equal(X.reshape(20, -1), expected / np.float32(255))
    assert y.tolist() == sum((batches[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    # channel-major layout: the first 1024 values of a row are the red plane
    np.testing.assert_array_equal(X[0, 0].ravel(), expected[0, :1024] / np.float32(255))
    Xt, yt = ds.load_cifar10(tmp_path / "cifar-10-batches-py", train=False, flatten=True)
    assert Xt.shape == (4, 3072) and yt.tolist() == batches["test_batch"][1]


def test_load_cifar10_str_keys(tmp_path, rng):
    _write_cifar(tmp_path, rng, str_keys=True, protocol=4)
    X, y = ds.load_cifar10(tmp_path, train=False)
    assert X.shape == (4, 3, 32, 32) and y.shape == (4,)


def test_load_cifar10_errors(tmp_path, rng):
    _write_cifar(tmp_path, rng)
    (tmp_path / "data_batch_3").unlink()
    with pytest.raises(ds.DatasetNotFoundError, match=r"CIFAR-10 batch file\(s\) \['data_batch_3'\] not found in"):
        ds.load_cifar10(tmp_path)
    (tmp_path / "test_batch").write_bytes(pickle.dumps({b"pixels": np.zeros(3)}, protocol=2))
    with pytest.raises(ValueError, match=r"is not a CIFAR-10 batch \(no 'data'/'labels'\)"):
        ds.load_cifar10(tmp_path, train=False)
    (tmp_path / "test_batch").write_bytes(pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}))
    msg = r"expected data of shape \(n, 3072\) and n labels; got data \(2, 100\) and 2 labels"
    with pytest.raises(ValueError, match=msg):
        ds.load_cifar10(tmp_path, train=False)
    (tmp_path / "test_batch").write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}))
    with pytest.raises(ValueError, match=r"CIFAR-10 labels must be in 0\.\.9; found 0\.\.10"):
        ds.load_cifar10(tmp_path, train=False)


class _Evil:
    def __reduce__(self):
        import os

        return (os.getcwd, ())


def test_load_cifar10_refuses_code_in_pickles(tmp_path):
    (tmp_path / "test_batch").write_bytes(pickle.dumps({b"data": _Evil(), b"labels": []}, protocol=2))
    with pytest.raises(pickle.UnpicklingError, match=r"refusing to load (posix|nt)\.getcwd from a CIFAR batch file"):
        ds.load_cifar10(tmp_path, train=False)


def test_read_arff_fast_path_equals_scipy(tmp_path, monkeypatch):
    from spred.datasets import _readers

    text = (
        "@relation t\n@attribute 'g 1' numeric\n@attribute c {'x y',z}\n@ATTRIBUTE g2 REAL\n"
        "@data\n% note\n1.25,'x y',-3e-2\n\n2,z,4\n"
    )
    (tmp_path / "t.arff").write_text(text)
    fast = _readers._arff_dense(text)
    slow = _readers._arff_scipy(text)
    assert fast[:2] == slow[:2] == (["g 1", "g2"], ["c"])
    np.testing.assert_array_equal(fast[2].astype(np.float32), slow[2])
    np.testing.assert_array_equal(fast[3], slow[3])
    monkeypatch.setattr(_readers, "_arff_scipy", None)  # read_arff must not need scipy here
    assert ds.read_arff(tmp_path / "t.arff").target_names.tolist() == ["x y", "z"]


@pytest.mark.parametrize(
    "text",
    [
        "@relation t\n@attribute g numeric\n@attribute c {a,b}\n@data\n1,a\n?,b\n",  # missing value
        "@relation t\n@attribute g numeric\n@attribute c {a,b}\n@data\n{0 1,1 a}\n",  # sparse row
        "@relation t\n@attribute g numeric\n@attribute s string\n@attribute c {a,b}\n@data\n1,foo,a\n",  # string
        "@relation t\n@attribute g numeric\n@attribute c {a,b}\n@data\n1,q\n",  # undeclared class value
        "@relation t\n@attribute g numeric\n@attribute c {a,b}\n@attribute d {u,v}\n@data\n1,a,u\n",  # two nominal
    ],
)
def test_read_arff_fast_path_declines_what_it_does_not_handle(text):
    from spred.datasets import _readers

    assert _readers._arff_dense(text) is None


def test_read_gds_soft_single_sample_with_empty_values(tmp_path):
    subsets = [("a", "disease state", ["GSM1"])]
    (tmp_path / "g.soft").write_text(_soft(subsets, [("1_at", "A", ""), ("2_at", "B", 2.5), ("3_at", "C", "NA")]))
    b = ds.read_gds_soft(tmp_path / "g.soft", missing="keep")
    assert b.data.shape == (1, 3) and np.isnan(b.data[0, [0, 2]]).all() and b.data[0, 1] == 2.5
    assert ds.read_gds_soft(tmp_path / "g.soft").feature_names.tolist() == ["2_at"]
