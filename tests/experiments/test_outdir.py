"""`--out` folders: no user file is lost, the folder is checked before any work, one run at a time, whole sets only.

The end-to-end tests run ``spred run lasso`` on a tiny problem (well under a second of
training) through the command line; the others use the output-folder helpers directly.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import threading

import pytest

from spred.cli import main
from spred.experiments import _common, _outdir, lasso

TINY = ["--quick", "--steps", "20", "--no-plot", "--methods", "spred", "--optimizers", "sgd"]


def _run(out, *extra):
    """``spred -q run lasso`` on a tiny problem; returns (exit code, stdout, stderr)."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(["-q", "run", "lasso", *TINY, "--out", str(out), *extra])
    return code, stdout.getvalue(), stderr.getvalue()


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with _common.num_threads(1):
        yield


# --------------------------------------------------------------------------- issue 19, item 1: no data loss


def test_a_folder_with_the_users_files_is_refused_and_left_untouched(tmp_path):
    (tmp_path / "config.json").write_text('{"mine": true}')
    (tmp_path / "summary.md").write_text("my notes")
    code, _, err = _run(tmp_path)
    assert code == 2
    assert err.startswith("spred: error: The 'out' folder") and "was not written by spred run" in err
    assert "config.json" in err and len(err.strip().splitlines()) == 1
    assert (tmp_path / "config.json").read_text() == '{"mine": true}'
    assert (tmp_path / "summary.md").read_text() == "my notes"
    assert sorted(os.listdir(tmp_path)) == ["config.json", "summary.md"]  # nothing of ours left behind


def test_a_folder_we_wrote_is_reused_and_new_or_empty_folders_are_fine(tmp_path):
    assert _run(tmp_path / "new" / "sub")[0] == 0
    (tmp_path / "empty").mkdir()
    assert _run(tmp_path / "empty")[0] == 0
    assert _run(tmp_path / "empty", "--seeds", "3")[0] == 0  # ours now: the second run replaces the first
    cfg, rows, _ = lasso.load_results(tmp_path / "empty")
    assert cfg.seeds == (3,) and {r["seed"] for r in rows} == {3}


def test_a_file_added_by_the_user_to_our_folder_is_never_replaced(tmp_path):
    with _outdir.output_folder(tmp_path, "lasso") as folder:
        folder.write_text("summary.md", "ours")
    (tmp_path / "notes.md").write_text("mine")
    with pytest.raises(_outdir.OutputFolderError, match=r"Not replacing \['notes.md'\] .* spred did not write them"):
        with _outdir.output_folder(tmp_path, "lasso") as folder:
            folder.write_text("notes.md", "would overwrite")
    assert (tmp_path / "notes.md").read_text() == "mine"
    assert (tmp_path / "summary.md").read_text() == "ours"


def test_out_is_checked_for_writing_before_the_experiment_runs(tmp_path, monkeypatch):
    computed = []
    monkeypatch.setattr(lasso, "make_problem", lambda cfg: computed.append(cfg))

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(_outdir.os, "open", refuse)  # what a read-only folder does to the lock file
    code, _, err = _run(tmp_path / "out")
    assert code == 2 and "is not writable: Permission denied" in err
    assert computed == []  # failed before any work


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="needs a non-root POSIX user (root writes anywhere)")
def test_a_read_only_out_fails_at_once(tmp_path):
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o500)
    try:
        code, _, err = _run(out)
    finally:
        out.chmod(0o700)
    assert code == 2 and "not writable" in err


# --------------------------------------------------------------------------- issue 19, item 6: whole sets, one run at a time


def test_an_interrupted_run_never_leaves_mixed_results(tmp_path, monkeypatch):
    assert _run(tmp_path, "--seeds", "0")[0] == 0
    real = _common.write_csv

    def interrupt_after_lasso_csv(rows, path, columns=None):
        real(rows, path, columns)
        if os.path.basename(path) == "lasso.csv":
            raise KeyboardInterrupt  # SIGINT right after lasso.csv is written

    monkeypatch.setattr(_common, "write_csv", interrupt_after_lasso_csv)
    code, _, err = _run(tmp_path, "--seeds", "1")
    assert code == 130 and "interrupted" in err
    cfg, rows, coefs = lasso.load_results(tmp_path)  # the previous, complete set
    assert cfg.seeds == (0,) and {r["seed"] for r in rows} == {0} and {r["seed"] for r in coefs} == {0}


def test_a_set_interrupted_while_moving_into_place_is_refused_on_load(tmp_path, monkeypatch):
    assert _run(tmp_path, "--seeds", "0")[0] == 0
    real, calls = os.replace, []

    def replace(src, dst):
        if str(src).endswith(".csv"):
            calls.append(src)
            if len(calls) == 2:
                raise KeyboardInterrupt
        return real(src, dst)

    monkeypatch.setattr(_outdir.os, "replace", replace)
    assert _run(tmp_path, "--seeds", "1")[0] == 130
    monkeypatch.setattr(_outdir.os, "replace", real)
    with pytest.raises(ValueError, match=r"The results in '.*' are incomplete: a run was interrupted while writing them"):
        lasso.load_results(tmp_path)
    assert _run(tmp_path, "--seeds", "1")[0] == 0  # running again repairs the folder
    assert lasso.load_results(tmp_path)[0].seeds == (1,)


def test_a_file_changed_after_the_run_is_refused_on_load(tmp_path):
    assert _run(tmp_path)[0] == 0
    lasso.load_results(tmp_path)
    with (tmp_path / "lasso.csv").open("a") as fh:
        fh.write("\n")
    with pytest.raises(ValueError, match=r"are mixed: 'lasso.csv' is not the file that run \w+ wrote"):
        lasso.load_results(tmp_path)
    with pytest.raises(ValueError, match=r"holds no results of 'spred run lasso'"):
        lasso.load_results(tmp_path / "nothing")


def test_two_runs_into_one_folder_the_second_is_refused(tmp_path, monkeypatch):
    started, release = threading.Event(), threading.Event()
    real = lasso.make_problem

    def slow(cfg):
        started.set()
        release.wait(30)
        return real(cfg)

    monkeypatch.setattr(lasso, "make_problem", slow)
    first: list = []
    thread = threading.Thread(target=lambda: first.append(lasso.run_experiment(lasso.check_config(
        lasso.LassoConfig(**{**lasso.QUICK, "n_steps": 5})), tmp_path, plot=False, progress=False)))  # fmt: skip
    thread.start()
    try:
        assert started.wait(30)
        code, _, err = _run(tmp_path)
    finally:
        release.set()
        thread.join(60)
    assert code == 2 and "is in use by another spred run (pid" in err
    assert first and lasso.load_results(tmp_path)[0].n_steps == 5  # the first run finished and its set is whole


def test_the_lock_of_a_dead_process_is_taken_over(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    import socket

    tmp_path.joinpath(_outdir.LOCK).write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname()}))
    assert _run(tmp_path)[0] == 0
    assert not (tmp_path / _outdir.LOCK).exists()  # released at the end
    tmp_path.joinpath(_outdir.LOCK).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    assert _run(tmp_path)[0] == 2  # a live holder (this process) keeps it
