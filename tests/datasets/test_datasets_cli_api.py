"""`spred datasets list|info|fetch`, the public API listing, and the docstring examples."""

from __future__ import annotations

import doctest
import importlib
import inspect
import shutil
import tempfile

import pytest

import spred.datasets as ds
from spred.cli import main

MODULES = ["spred.datasets", "spred.datasets._base", "spred.datasets._registry", "spred.datasets._readers",
           "spred.datasets._loaders", "spred.datasets._cifar"]  # fmt: skip


def test_all_is_consistent_and_documented():
    assert sorted(ds.__all__) == sorted(set(ds.__all__))
    for name in ds.__all__:
        obj = getattr(ds, name)
        if inspect.isfunction(obj):
            doc = inspect.getdoc(obj)
            assert doc and "Parameters" in doc and "Examples" in doc, name


@pytest.mark.parametrize("module", MODULES)
def test_docstring_examples(module, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # examples write their toy files here
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0


def test_import_is_light():
    """`spred --help` imports spred.datasets._cli: sklearn and scipy must wait until a loader runs."""
    import subprocess
    import sys

    code = "import sys, spred.datasets._cli; print([m for m in ('matplotlib', 'sklearn', 'scipy') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_get_data_home_order(tmp_path, monkeypatch):
    monkeypatch.setenv("SPRED_DATA", str(tmp_path / "env"))
    assert ds.get_data_home() == tmp_path / "env"
    assert ds.get_data_home(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.setenv("SPRED_DATA", "")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr("sys.platform", "linux")
    assert ds.get_data_home() == tmp_path / "cache" / "spred"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert ds.get_data_home("~/d") == tmp_path / "home" / "d"
    assert not (tmp_path / "cache").exists()  # nothing is created


# --------------------------------------------------------------------------- CLI


@pytest.mark.data
def test_cli_list(data_home, capsys):
    assert main(["datasets", "--data-home", str(data_home), "list"]) == 0
    out = capsys.readouterr().out
    assert f"data folder: {data_home} (from the data_home argument)" in out
    lines = out.splitlines()[2:]
    assert [line.split()[0] for line in lines] == ds.list_datasets()
    assert all(line.rstrip().endswith("verified") or line.rstrip().endswith("verified (fixture)") for line in lines)
    assert any(line.startswith("mnist_train") and "60000 x 784" in line and " 10 " in line for line in lines)


@pytest.mark.data
def test_cli_list_kind_and_missing(tmp_path, capsys, data_home):
    shutil.copytree(data_home / "scikit_feature", tmp_path / "scikit_feature")
    broken = tmp_path / "scikit_feature" / "madelon.mat"
    broken.chmod(0o644)
    broken.write_bytes(broken.read_bytes()[:-1] + b"\x00")
    assert main(["datasets", "--data-home", str(tmp_path), "list", "--kind", "other"]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[2:]}
    assert set(rows) == {"arcene", "madelon"}
    assert rows["arcene"].endswith("verified") and rows["madelon"].endswith("CORRUPT")
    assert main(["datasets", "--data-home", str(tmp_path), "list", "--kind", "images"]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[2:]}
    assert rows["mnist_test"].endswith("missing") and rows["ORL"].endswith("verified")


@pytest.mark.data
def test_cli_info(data_home, capsys):
    assert main(["datasets", "--data-home", str(data_home), "info", "gds507"]) == 0
    out = capsys.readouterr().out
    info = ds.dataset_info("GDS507")
    for text in (info.name, info.title, info.kind, "17 x 22645", "0=RCC (9), 1=normal (8)", info.label_source,
                 info.provenance, info.licence, "no (format fixture)", info.files[0].sha256, info.files[0].urls[0],
                 f"looked at: {data_home / 'geo_soft' / 'GDS507.soft.gz'}", "[verified]"):  # fmt: skip
        assert text in out, text


def test_cli_info_unknown_and_no_action(capsys):
    assert main(["datasets", "info", "mnist"]) == 2
    assert "spred: error: Unknown dataset 'mnist'. Did you mean 'mnist_test', 'mnist_train'?" in capsys.readouterr().err
    assert main(["datasets"]) == 2
    assert "usage: spred datasets" in capsys.readouterr().out


@pytest.mark.data
def test_cli_fetch_from_file_mirror(data_home, tmp_path, capsys):
    # a file:// mirror keeps this test off the network; the HTTP path is tested in test_datasets_download.py
    home = tmp_path / "home"
    assert main(["datasets", "--data-home", str(home), "fetch", "lung_discrete", "--base-url", data_home.as_uri()]) == 0
    assert f"verified {home / 'scikit_feature' / 'lung_discrete.mat'}" in capsys.readouterr().out
    assert ds.load_dataset("lung_discrete", data_home=home).data.shape == (73, 325)
