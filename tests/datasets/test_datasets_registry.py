"""The registry is plain data that matches MANIFEST.md and checksums.sha256 exactly."""

from __future__ import annotations

import re

import pytest

import spred.datasets as ds
from spred.datasets._registry import FORMATS, REGISTRY

NAMES = [info.name for info in REGISTRY]


def test_names_unique_case_insensitively():
    assert len({n.lower() for n in NAMES}) == len(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_entry_is_well_formed(name):
    info = ds.dataset_info(name)
    assert info.kind in ds.KINDS
    assert info.format in FORMATS
    assert info.files
    for f in info.files:
        assert re.fullmatch(r"[0-9a-f]{64}", f.sha256)
        assert f.gunzipped_sha256 is None or re.fullmatch(r"[0-9a-f]{64}", f.gunzipped_sha256)
        assert not f.path.startswith("/") and "\\" not in f.path
        assert f.size > 0
        assert all(u.startswith("https://") or u.startswith("http://") for u in f.urls)
    assert info.n_samples == sum(info.class_counts)
    assert info.n_classes >= 2 and min(info.class_counts) > 0
    assert len(set(info.target_names)) == info.n_classes
    assert info.provenance and info.licence and info.label_source


def test_every_dataset_has_a_public_url():
    # GitHub raw URLs at pinned commits, or the official MNIST mirrors. The CIFAR-10 zip was
    # assembled from 60,000 files of a repository: no single public file serves it.
    assert all(ds.dataset_info(n).downloadable for n in NAMES if not n.startswith("cifar10"))
    assert not ds.dataset_info("cifar10_train").downloadable


def test_biolab_sources_serve_the_uncompressed_blob():
    for info in REGISTRY:
        for f in info.files:
            if f.gunzipped_sha256 is not None:
                assert f.path.endswith(".gz")
                assert all(not u.endswith(".gz") for u in f.urls)


def test_list_datasets_filters_by_kind_and_benchmark():
    assert ds.list_datasets() == NAMES
    genes = ds.list_datasets(kind="gene expression")
    assert genes[:3] == ["ALLAML", "GLIOMA", "Prostate_GE"]
    assert "GDS507" in genes and "GDS507" not in ds.list_datasets(kind="gene expression", benchmark=True)
    assert ds.list_datasets(benchmark=False) == ["GDS507"]
    assert ds.list_datasets(kind="text") == ["BASEHOCK", "PCMAC", "RELATHE"]
    assert ds.list_datasets(kind="other") == ["arcene", "madelon"]
    assert set(ds.list_datasets(kind="images")) >= {"ORL", "mnist_train", "mnist_test", "fashion_mnist_subset"}
    assert sorted(sum((ds.list_datasets(kind=k) for k in ds.KINDS), [])) == sorted(NAMES)


def test_list_datasets_rejects_unknown_kind():
    with pytest.raises(ValueError, match=r"The 'kind' parameter of list_datasets must be one of .*Got 'genes'"):
        ds.list_datasets(kind="genes")


def test_dataset_info_is_case_insensitive():
    assert ds.dataset_info("allaml") is ds.dataset_info("ALLAML")
    assert ds.dataset_info("Mnist_Test").shape == (10000, 784)


def test_dataset_info_unknown_name_suggests_close_ones():
    with pytest.raises(ValueError, match=r"Unknown dataset 'mnist'\. Did you mean 'mnist_test', 'mnist_train'"):
        ds.dataset_info("mnist")
    with pytest.raises(ValueError, match=r"Unknown dataset 'nope'\. See spred.datasets.list_datasets"):
        ds.dataset_info("nope")


# --------------------------------------------------------------------------- against the data folder's own records


def _registry_files():
    return {f.path: f for info in REGISTRY for f in info.files}


@pytest.mark.data
def test_registry_matches_checksums_file(data_home):
    listed = {}
    for line in (data_home / "checksums.sha256").read_text().splitlines():
        if line.strip():
            sha, path = line.split(maxsplit=1)
            listed[path.strip()] = sha
    files = _registry_files()
    assert set(files) == set(listed), "registry files and checksums.sha256 differ"
    for path, sha in listed.items():
        assert files[path].sha256 == sha, path


@pytest.mark.data
def test_registry_matches_manifest_tables(data_home):
    manifest = (data_home / "MANIFEST.md").read_text()
    files = _registry_files()
    by_path = {f.path: info for info in REGISTRY for f in info.files}
    main_rows, checked = 0, set()
    for row in manifest.splitlines():
        paths = [p for p in re.findall(r"[\w./-]+\.(?:mat|gz|npz|zip)", row) if p in files]
        if not row.startswith("|") or not paths:
            continue
        f, cells = files[paths[0]], [c.strip() for c in row.strip().strip("|").split("|")]
        if len(cells) == 2:  # the table of sha256 of the gunzipped content
            assert cells[1] == f.gunzipped_sha256, f.path
            continue
        assert f.sha256 in row and str(f.size) in cells, f.path
        checked.add(f.path)
        if re.match(r"\| \d+ \|", row):  # a row of the main table: shape and classes
            main_rows += 1
            info = by_path[f.path]
            shape = re.search(r"\| (\d+) x (\d+) \|", row)
            assert (int(shape[1]), int(shape[2])) == info.shape, info.name
            k = re.search(r"\| (\d+) \(([^|]*)\) \|", row)
            assert int(k[1]) == info.n_classes, info.name
            if "..." not in k[2]:  # ORL's and Yale's lists are abbreviated in the manifest
                counts = {n: int(c) for n, c in re.findall(r"([\w-]+):(\d+)", k[2])}
                assert counts == dict(info.classes), info.name
    assert checked == set(files), "registry files without a manifest row"
    assert main_rows == len([i for i in REGISTRY if i.format in ("mat", "arff", "gds_soft")])
