"""The ``spred`` command line ends a user's mistake with one line and exit code 2, never a traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from spred.cli import main


def _cli(capsys, *argv):
    """Run ``spred argv`` in this process; returns (exit code, stderr). argparse errors exit through SystemExit."""
    try:
        code = main(list(argv))
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["run", "lasso", "--threads", "0"], "spred run lasso: error: argument --threads: must be an int >= 1. Got 0 instead."),
        (["run", "genes", "--threads", "-2"], "spred run genes: error: argument --threads: must be an int >= 1. Got -2 instead."),
        (["run", "lasso", "--seeds", "-1"], "argument --seeds: must be an int >= 0. Got -1 instead."),
        (["demo", "--seed", "-1"], "spred demo: error: argument --seed: must be an int >= 0. Got -1 instead."),
        (["demo", "--threads", "0"], "spred demo: error: argument --threads: must be an int >= 1. Got 0 instead."),
        (["run", "lasso", "--steps", "x"], "argument --steps: must be an int >= 0. Got 'x' instead."),
    ],
)
def test_bad_numbers_on_the_command_line_are_one_line_errors(capsys, argv, match):
    code, err = _cli(capsys, *argv)
    assert code == 2
    assert err.strip().splitlines()[-1].endswith(match)
    assert "Traceback" not in err


def test_out_pointing_at_a_file_is_a_one_line_error(capsys, tmp_path):
    (tmp_path / "file").write_text("x")
    code, err = _cli(capsys, "run", "lasso", "--quick", "--out", str(tmp_path / "file"))
    assert code == 2
    assert err == f"spred: error: The 'out' folder '{tmp_path / 'file'}' exists and is not a folder; choose another --out.\n"
    code, err = _cli(capsys, "demo", "--quick", "--out", str(tmp_path / "file"))
    assert code == 2 and err.startswith("spred: error: The 'out' folder")


def test_config_pointing_at_a_folder_is_a_one_line_error(capsys, tmp_path):
    code, err = _cli(capsys, "run", "lasso", "--quick", "--config", str(tmp_path), "--out", str(tmp_path / "out"))
    assert code == 2
    assert err == f"spred: error: The config file '{tmp_path}' is a folder; --config takes a JSON file (such as a config.json that spred run wrote).\n"
    assert not (tmp_path / "out").exists()


def test_failures_of_datasets_fetch_are_one_line_errors(capsys, tmp_path):
    code, err = _cli(capsys, "datasets", "fetch", "no_such_dataset")
    assert code == 2 and err.startswith("spred: error: Unknown dataset 'no_such_dataset'.") and "Traceback" not in err
    code, err = _cli(capsys, "datasets", "--data-home", str(tmp_path), "fetch", "colon", "--base-url", (tmp_path / "mirror").as_uri() + "/")
    assert code == 2 and err.startswith("spred: error: Could not download") and "Traceback" not in err


def test_traceback_flag_shows_the_traceback(tmp_path):
    (tmp_path / "file").write_text("x")
    cmd = [sys.executable, "-m", "spred.cli", "--traceback", "run", "lasso", "--quick", "--out", str(tmp_path / "file")]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 1 and "Traceback" in done.stderr and "OutputFolderError" in done.stderr
