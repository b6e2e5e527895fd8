"""Readers for the file formats of the real datasets.

Each reader takes a path and returns NumPy arrays; none of them checks checksums
(that is :func:`spred.datasets.load_dataset`'s job). Labels are always encoded as
int64 0..K-1 in sorted order of the original class names (numerically when the
file stores numbers), and the original names are kept as ``target_names``.
"""

from __future__ import annotations

import gzip
import io
import logging
import os
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from spred._validation import check_choice

if TYPE_CHECKING:
    from sklearn.utils import Bunch

__all__ = ["read_arff", "read_gds_soft", "read_idx", "read_mat"]

logger = logging.getLogger(__name__)

_GZIP_MAGIC = b"\x1f\x8b"


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == _GZIP_MAGIC


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, gunzipped when the file is gzip (by magic bytes, not by name)."""
    raw = Path(path).read_bytes()
    return gzip.decompress(raw) if raw[:2] == _GZIP_MAGIC else raw


def _open_text(path: Path):
    if _is_gzip(path):
        return gzip.open(path, "rt", encoding="utf-8", errors="replace", newline="")
    return open(path, encoding="utf-8", errors="replace", newline="")


def make_bunch(**fields) -> Bunch:
    """A :class:`sklearn.utils.Bunch`; sklearn is imported only here, so that the CLI starts fast."""
    from sklearn.utils import Bunch

    return Bunch(**fields)


def encode_labels(raw) -> tuple[np.ndarray, np.ndarray]:
    """Map class labels to int64 0..K-1 in sorted order of the original values.

    Numbers sort numerically ({-1, 1} -> {0, 1}; 1..K -> 0..K-1), strings
    lexicographically. Returns ``(y, target_names)`` with ``target_names`` the
    original values as strings, in label order.
    """
    raw = np.asarray(raw).ravel()
    names, y = np.unique(raw, return_inverse=True)
    if names.dtype.kind == "f" and np.all(names == np.round(names)):
        names = names.astype(np.int64)
    return y.astype(np.int64), names.astype(str)


# --------------------------------------------------------------------------- MATLAB .mat


def read_mat(path: str | os.PathLike, *, x_key: str = "X", y_key: str = "Y") -> Bunch:
    """Read a MATLAB (v5) ``.mat`` file holding a data matrix and a label vector.

    This is the scikit-feature repository's layout: ``X`` (n_samples x
    n_features, any numeric dtype, dense or sparse) and ``Y`` (labels, e.g.
    {-1, 1} or 1..K).

    Parameters
    ----------
    path : str or path-like
        The ``.mat`` file.
    x_key, y_key : str
        Variable names of the data and of the labels.

    Returns
    -------
    Bunch
        ``data`` (float32, C-contiguous), ``target`` (int64 in 0..K-1),
        ``target_names`` (original labels as str, in label order),
        ``feature_names`` (None: the files have none).

    Raises
    ------
    ValueError
        If a variable is missing or the row counts of X and Y differ.

    Examples
    --------
    >>> import numpy as np, scipy.io, tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "toy.mat"
    >>> scipy.io.savemat(p, {"X": np.eye(3), "Y": np.array([[-1], [1], [1]])})
    >>> b = read_mat(p)
    >>> b.data.dtype, b.target.tolist(), b.target_names.tolist()
    (dtype('float32'), [0, 1, 1], ['-1', '1'])
    """
    import scipy.io
    import scipy.sparse

    mat = scipy.io.loadmat(path, variable_names=[x_key, y_key])
    missing = [k for k in (x_key, y_key) if k not in mat]
    if missing:
        raise ValueError(f"{os.fspath(path)!r} has no variable(s) {missing}; expected {x_key!r} and {y_key!r}.")
    X = mat[x_key]
    if scipy.sparse.issparse(X):
        X = X.toarray()
    X = np.ascontiguousarray(X, dtype=np.float32)
    y, names = encode_labels(mat[y_key])
    if X.ndim != 2 or X.shape[0] != y.shape[0]:
        raise ValueError(
            f"{os.fspath(path)!r}: {x_key} has shape {X.shape} but {y_key} has {y.shape[0]} labels; "
            "expected one label per row."
        )
    return make_bunch(data=X, target=y, target_names=names, feature_names=None)


# --------------------------------------------------------------------------- ARFF


def read_arff(path: str | os.PathLike) -> Bunch:
    """Read an ARFF file (plain or gzipped) whose class is its single nominal attribute.

    Every numeric attribute is a feature, in file order; the one nominal
    attribute is the class, wherever it is declared. Missing numeric values
    (``?``) are returned as NaN (the staged gene-expression files have none).
    Dense files with numeric attributes, one nominal class and no missing
    values are parsed by numpy's C ``loadtxt`` (about 3x faster than scipy on
    the 12533-gene files); everything else by :func:`scipy.io.arff.loadarff`.
    Both give the same arrays.

    Parameters
    ----------
    path : str or path-like
        The ``.arff`` or ``.arff.gz`` file.

    Returns
    -------
    Bunch
        ``data`` (float32), ``target`` (int64 0..K-1, sorted class names),
        ``target_names``, ``feature_names`` (the attribute names),
        ``class_attribute`` (name of the nominal attribute).

    Raises
    ------
    ValueError
        If the file has no nominal attribute or more than one, or a sample's
        class is missing.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "toy.arff"
    >>> _ = p.write_text("@relation t\\n@attribute g1 numeric\\n@attribute g2 numeric\\n"
    ...                  "@attribute cls {b,a}\\n@data\\n1,2,b\\n3,4,a\\n")
    >>> b = read_arff(p)
    >>> b.data.tolist(), b.target.tolist(), b.target_names.tolist()
    ([[1.0, 2.0], [3.0, 4.0]], [1, 0], ['a', 'b'])
    """
    path = Path(path)
    text = _read_bytes(path).decode("utf-8", errors="replace")
    numeric, nominal, X, labels = _arff_dense(text) or _arff_scipy(text)
    if len(nominal) != 1:
        raise ValueError(
            f"{os.fspath(path)!r}: expected exactly one nominal (class) attribute, found {len(nominal)}: {nominal}."
        )
    if np.any(labels == "?"):
        raise ValueError(f"{os.fspath(path)!r}: {int(np.sum(labels == '?'))} sample(s) have a missing class ('?').")
    y, target_names = encode_labels(labels)
    return make_bunch(
        data=np.ascontiguousarray(X, dtype=np.float32),
        target=y,
        target_names=target_names,
        feature_names=np.asarray(numeric, dtype=str),
        class_attribute=nominal[0],
    )


def _arff_scipy(text: str):
    """(numeric names, nominal names, X, class labels) through scipy.io.arff (handles every ARFF feature)."""
    from numpy.lib.recfunctions import structured_to_unstructured
    from scipy.io import arff

    data, meta = arff.loadarff(io.StringIO(text))
    names, types = meta.names(), meta.types()
    nominal = [n for n, t in zip(names, types) if t == "nominal"]
    numeric = [n for n, t in zip(names, types) if t == "numeric"]
    X = structured_to_unstructured(data[numeric], dtype=np.float32, copy=True)
    labels = np.char.decode(data[nominal[0]].astype(bytes), "utf-8") if len(nominal) == 1 else None
    return numeric, nominal, X, labels


_ARFF_ATTRIBUTE = re.compile(r"@attribute\s+('[^']*'|\"[^\"]*\"|\S+)\s+(.+?)\s*$", re.IGNORECASE)
_ARFF_DATA = re.compile(r"^[ \t]*@data[ \t]*\r?$", re.IGNORECASE | re.MULTILINE)


def _arff_dense(text: str):
    """Fast path for dense ARFF with numeric attributes and one nominal class, no missing values.

    scipy's reader converts value by value in Python (about 0.8 s for 102 x 12533);
    numpy's C ``loadtxt`` does the same in about a third of that. Returns None for
    anything else (sparse rows, quotes, '?', string/date attributes, several or no
    nominal attributes), which then goes through scipy.
    """
    match = _ARFF_DATA.search(text)
    if match is None:
        return None
    header, body = text[: match.start()], text[match.end() :]
    if any(c in body for c in '?{"'):
        return None
    names, numeric_cols, nominal_cols, declared = [], [], [], set()
    for line in header.splitlines():
        if not line.lstrip().lower().startswith("@attribute"):
            continue
        attribute = _ARFF_ATTRIBUTE.match(line.strip())
        if attribute is None:
            return None
        kind = attribute[2]
        if kind.lower() in ("numeric", "real", "integer"):
            numeric_cols.append(len(names))
        elif kind.startswith("{") and kind.endswith("}"):
            nominal_cols.append(len(names))
            declared = {v.strip().strip("'") for v in kind[1:-1].split(",")}
        else:
            return None
        names.append(attribute[1].strip("'\""))
    if len(nominal_cols) != 1:
        return None
    options = dict(delimiter=",", comments="%", ndmin=2)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # numpy's note on blank lines
            X = np.loadtxt(io.StringIO(body), usecols=numeric_cols, dtype=np.float64, **options)
            labels = np.loadtxt(io.StringIO(body), usecols=nominal_cols, dtype=str, quotechar="'", **options)
    except ValueError:
        return None
    labels = np.char.strip(labels[:, 0])
    if X.shape[0] != labels.shape[0] or not set(np.unique(labels).tolist()) <= declared:
        return None
    return [names[i] for i in numeric_cols], [names[nominal_cols[0]]], X, labels


# --------------------------------------------------------------------------- GEO SOFT (GDS)

# A whole tab-separated field that is empty, "null", "NA" or "nan" (any case) is a missing value.
_SOFT_MISSING = re.compile(r"(?<![^\t\n])(?:null|na|nan)?(?![^\t\n])", re.IGNORECASE)


def _parse_table(text: str, n_rows: int) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # numpy's note on blank lines
        values = np.loadtxt(io.StringIO(text), delimiter="\t", dtype=np.float64, comments=None, ndmin=2)
    if values.shape[0] != n_rows:  # loadtxt skips empty lines: a 1-sample table with an empty value
        raise ValueError(f"{n_rows - values.shape[0]} empty row(s)")
    return values


def _soft_value(line: str) -> tuple[str, str]:
    key, _, value = line.partition("=")
    return key.strip(), value.strip()


def read_gds_soft(
    path: str | os.PathLike,
    *,
    subset_type: str = "disease state",
    missing: str = "drop",
) -> Bunch:
    """Read a GEO DataSet (GDS) SOFT file, plain or gzipped, in one streaming pass.

    Labels come from the ``^SUBSET`` blocks of **one** subset type
    (``!subset_type``, default ``"disease state"``): each such subset is a
    class named by its ``!subset_description``, and lists its samples in
    ``!subset_sample_id``. Subsets of other types (e.g. ``individual``,
    ``time``) are ignored. Concatenating all subsets (as the original spred
    code did) would give samples several, contradictory labels.

    * A sample in no subset of that type is dropped, with a ``UserWarning``
      naming how many and which (they also go to ``dropped_samples``).
    * A sample in two subsets of that type is an error.
    * Missing values (``null``, ``NA``, ``nan`` or empty) either drop the probe
      (``missing="drop"``, the default: no value is invented, and no statistic
      of the test samples leaks into the training features as a per-probe median
      would) or stay NaN (``missing="keep"``, to impute inside a cross-validated
      pipeline). Only the kept samples count.

    Parameters
    ----------
    path : str or path-like
        A GDS SOFT file (``GDSxxx.soft`` or ``.soft.gz``, "full" or not).
    subset_type : str, default "disease state"
        The ``!subset_type`` whose subsets are the classes (case-insensitive).
    missing : {"drop", "keep"}, default "drop"
        What to do with probes that have missing values.

    Returns
    -------
    Bunch
        ``data`` (float32, samples x probes), ``target`` (int64 0..K-1 in sorted
        order of the subset descriptions), ``target_names``, ``feature_names``
        (``ID_REF``, the unique probe ids), ``identifiers`` (``IDENTIFIER``, gene
        symbols, not unique), ``sample_ids`` (GSM ids, in table order),
        ``dropped_samples``, ``n_dropped_features``, ``subset_type``,
        ``value_type`` and ``title`` (from the header).

    Raises
    ------
    ValueError
        If ``missing`` is not "drop" or "keep", no subset has ``subset_type``
        (the message lists the types present), a sample is in two subsets of
        that type, the table is missing or malformed, or a value is not a number.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> soft = "\\n".join([
    ...     "^DATASET = GDS0", "!dataset_value_type = count",
    ...     "^SUBSET = GDS0_1", "!subset_description = tumour",
    ...     "!subset_sample_id = GSM1,GSM2", "!subset_type = disease state",
    ...     "^SUBSET = GDS0_2", "!subset_description = normal",
    ...     "!subset_sample_id = GSM3", "!subset_type = disease state",
    ...     "!dataset_table_begin", "ID_REF\\tIDENTIFIER\\tGSM1\\tGSM2\\tGSM3",
    ...     "p1\\tTP53\\t1.5\\t2.5\\t3.5", "p2\\tMYC\\tnull\\t1\\t2", "!dataset_table_end", ""])
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "GDS0.soft"
    >>> _ = p.write_text(soft)
    >>> b = read_gds_soft(p)
    >>> b.data.tolist(), b.target.tolist(), b.target_names.tolist(), b.feature_names.tolist()
    ([[1.5], [2.5], [3.5]], [1, 1, 0], ['normal', 'tumour'], ['p1'])
    """
    check_choice(missing, "missing", "read_gds_soft", ("drop", "keep"))
    path = Path(path)
    where = os.fspath(path)
    header, subsets, columns, rows = _scan_soft(path)
    label_of = _soft_labels(subsets, subset_type, where)
    samples = columns[2:]
    keep = [j for j, s in enumerate(samples) if s in label_of]
    dropped = [s for s in samples if s not in label_of]
    if dropped:
        warnings.warn(
            f"{len(dropped)} of {len(samples)} samples of {path.name} are in no subset of type {subset_type!r} and "
            f"were dropped: {', '.join(dropped[:10])}{' ...' if len(dropped) > 10 else ''}.",
            UserWarning,
            stacklevel=2,
        )
    if not keep:
        raise ValueError(f"{where!r}: no sample of the table is in a subset of type {subset_type!r}.")
    ids, identifiers, values = _soft_table(rows, columns, where)
    values = values[:, keep]
    n_dropped_features = 0
    if missing == "drop":
        complete = ~np.isnan(values).any(axis=1)
        n_dropped_features = int((~complete).sum())
        values, ids, identifiers = values[complete], ids[complete], identifiers[complete]
    kept_samples = [samples[j] for j in keep]
    y, target_names = encode_labels(np.array([label_of[s] for s in kept_samples], dtype=str))
    return make_bunch(
        data=np.ascontiguousarray(values.T, dtype=np.float32),
        target=y,
        target_names=target_names,
        feature_names=ids,
        identifiers=identifiers,
        sample_ids=np.array(kept_samples, dtype=str),
        dropped_samples=dropped,
        n_dropped_features=n_dropped_features,
        subset_type=subset_type,
        value_type=header.get("value_type", ""),
        title=header.get("title", ""),
    )


def _soft_header_line(line: str, header: dict, subsets: list[dict]) -> None:
    """Record one line before the table: a subset's fields, or a ``!dataset_`` header field."""
    if line.startswith("^SUBSET"):
        subsets.append({"id": _soft_value(line)[1], "description": "", "type": "", "samples": []})
    elif line.startswith("^"):
        subsets.append(None)  # another block: the subset fields that follow belong to no subset
    elif line.startswith("!subset_") and subsets and subsets[-1] is not None:
        key, value = _soft_value(line)
        current = subsets[-1]
        if key == "!subset_description":
            current["description"] = value
        elif key == "!subset_type":
            current["type"] = value
        elif key == "!subset_sample_id":
            current["samples"] += [s.strip() for s in value.split(",") if s.strip()]
    elif line.startswith("!dataset_"):
        key, value = _soft_value(line)
        header.setdefault(key[len("!dataset_") :], value)


def _scan_soft(path: Path) -> tuple[dict, list[dict], list[str], list[str]]:
    """One streaming pass: (header fields, subsets, table columns, table rows as text)."""
    header: dict[str, str] = {}
    subsets: list[dict | None] = []
    columns: list[str] | None = None
    rows: list[str] = []
    state = "header"  # header -> table -> done
    with _open_text(path) as f:
        for line in f:
            if state == "header":
                if line.startswith("!dataset_table_begin"):
                    state = "table"
                else:
                    _soft_header_line(line, header, subsets)
            elif state == "table":
                if line.startswith("!dataset_table_end"):
                    state = "done"
                elif columns is None:
                    columns = line.rstrip("\r\n").split("\t")
                elif line.strip():
                    rows.append(line.rstrip("\r\n"))
    where = os.fspath(path)
    if state != "done" or columns is None:
        raise ValueError(f"{where!r}: no complete '!dataset_table_begin' ... '!dataset_table_end' table found.")
    if columns[:2] != ["ID_REF", "IDENTIFIER"]:
        raise ValueError(f"{where!r}: the table must start with columns ID_REF, IDENTIFIER; got {columns[:2]}.")
    return header, [s for s in subsets if s is not None], columns, rows


def _soft_labels(subsets: list[dict], subset_type: str, where: str) -> dict[str, str]:
    """sample id -> class (the description of its one subset of ``subset_type``)."""
    wanted = subset_type.strip().lower()
    chosen = [s for s in subsets if s["type"].lower() == wanted]
    if not chosen:
        types = sorted({s["type"] for s in subsets})
        raise ValueError(f"{where!r} has no subset of type {subset_type!r}; subset types present: {types}.")
    label_of: dict[str, str] = {}
    for s in chosen:
        for sample in s["samples"]:
            if sample in label_of and label_of[sample] != s["description"]:
                raise ValueError(
                    f"{where!r}: sample {sample} is in two subsets of type {subset_type!r} "
                    f"({label_of[sample]!r} and {s['description']!r}); its label is ambiguous."
                )
            label_of[sample] = s["description"]
    return label_of


def _soft_table(rows: list[str], columns: list[str], where: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(probe ids, gene symbols, values probes x samples with NaN for missing) of the table rows."""
    bad = next((i for i, r in enumerate(rows) if r.count("\t") != len(columns) - 1), None)
    if bad is not None:
        raise ValueError(
            f"{where!r}: table row {bad + 1} ({rows[bad].split(chr(9))[0]!r}) has {rows[bad].count(chr(9)) + 1} "
            f"fields, the header has {len(columns)}."
        )
    parts = [r.split("\t", 2) for r in rows]
    ids = np.array([p[0] for p in parts], dtype=str)
    identifiers = np.array([p[1] for p in parts], dtype=str)
    table = "\n".join(p[2] for p in parts)
    try:  # numpy's C parser reads all values at once
        values = _parse_table(table, len(rows))
    except ValueError:  # missing values: rewrite them as "nan" (slower, so only when needed) and retry
        try:
            values = _parse_table(_SOFT_MISSING.sub("nan", table), len(rows))
        except ValueError as exc:
            raise ValueError(f"{where!r}: the table holds a value that is not a number ({exc}).") from exc
    return ids, identifiers, values


# --------------------------------------------------------------------------- idx (MNIST)

_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _read_idx(path: Path) -> np.ndarray:
    """Like :func:`read_idx`, but may return a read-only view of the file's bytes."""
    buf = _read_bytes(path)
    if len(buf) < 4 or buf[0] != 0 or buf[1] != 0 or buf[2] not in _IDX_DTYPES:
        raise ValueError(f"{os.fspath(path)!r} is not an idx file (bad magic number {buf[:4].hex()}).")
    ndim = buf[3]
    offset = 4 + 4 * ndim
    dims = tuple(int.from_bytes(buf[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[buf[2]])
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(buf) - offset != expected:
        raise ValueError(
            f"{os.fspath(path)!r}: the idx header says shape {dims} ({expected} bytes of data) "
            f"but the file holds {len(buf) - offset} bytes after the header."
        )
    array = np.frombuffer(buf, dtype=dtype, offset=offset).reshape(dims)
    return array if dtype.itemsize == 1 else array.astype(dtype.newbyteorder("="))


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an idx file (the MNIST format), plain or gzipped.

    Parameters
    ----------
    path : str or path-like
        E.g. ``train-images-idx3-ubyte.gz``.

    Returns
    -------
    numpy.ndarray
        The array with the dtype and shape of the header (uint8 (60000, 28, 28)
        for MNIST's training images), in native byte order.

    Raises
    ------
    ValueError
        If the magic number is wrong or the data size does not match the header.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "labels-idx1-ubyte"
    >>> _ = p.write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 2, 1]))
    >>> read_idx(p).tolist()
    [7, 2, 1]
    """
    return np.array(_read_idx(Path(path)))
