"""The ``learned-optim`` command's user errors: one line on stderr, exit code 2, before any work."""

from __future__ import annotations

import pytest

from learned_optim import __version__
from learned_optim.cli import main


def _error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"learned-optim {__version__}"


def test_demo_unknown_weights(capsys):
    line = _error(capsys, ["demo", "--weights", "no-such-weights"])
    assert line.startswith("learned-optim demo: error: --weights 'no-such-weights'")
    assert "shipped:" in line and "lstm-h4-v1" in line


@pytest.mark.parametrize("lr", ["-1", "nan", "inf"])
def test_demo_bad_lr(capsys, lr):
    assert "--lr must be a positive number" in _error(capsys, ["demo", "--lr", lr])


def test_demo_zero_lr_refused(capsys):
    assert "--lr 0 would train nothing" in _error(capsys, ["demo", "--lr", "0"])


def test_demo_steps(capsys):
    assert "--steps must be >= 1" in _error(capsys, ["demo", "--steps", "0"])


def test_demo_plot_checked_before_training(capsys, tmp_path, monkeypatch):
    import learned_optim.demo as demo

    def no_training(*a, **k):
        raise AssertionError("trained before checking --plot")

    monkeypatch.setattr(demo, "train_digits", no_training)
    line = _error(capsys, ["demo", "--plot", str(tmp_path / "missing_dir" / "x.png")])
    assert "does not exist; create it first" in line
    assert "must name a .png file" in _error(capsys, ["demo", "--plot", str(tmp_path / "x.txt")])
    assert "is a directory" in _error(capsys, ["demo", "--plot", str(tmp_path)])
    (tmp_path / "file").write_text("x")
    assert "does not exist" in _error(capsys, ["demo", "--plot", str(tmp_path / "file" / "x.png")])


def test_demo_runs_and_writes_plot(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "demo.png"
    assert main(["demo", "--steps", "5", "--plot", str(png)]) == 0
    assert png.stat().st_size > 0
    assert "test accuracy" in capsys.readouterr().out


def test_unknown_subcommand_is_argparse_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["no-such-command"])
    assert e.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
