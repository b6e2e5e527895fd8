"""`spred demo` runs end to end and shows the Lasso solved exactly."""

import pytest

from spred.cli import main


def test_demo_quick(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    assert main(["demo", "--quick", "--out", str(tmp_path), "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "spred on the closed form at every alpha: yes" in out
    assert "same zeros: True" in out  # diabetes: the zeros of sklearn's Lasso
    assert "compression ratio" in out
    assert (tmp_path / "demo.png").stat().st_size > 10_000
