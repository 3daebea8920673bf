"""`learned-optim meta-train`."""

import json

from learned_optim import from_pretrained
from learned_optim.cli import main


def test_cli_preset_and_json_config(tmp_path, capsys):
    assert main(["meta-train", "--config", "tiny", "--out", str(tmp_path / "a"), "--no-progress"]) == 0
    assert "saved" in capsys.readouterr().out
    assert from_pretrained(tmp_path / "a").provenance["meta_train_config"]["meta_steps"] == 6

    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"preset": "tiny", "meta_steps": 3}))
    assert main(["meta-train", "--config", str(cfg), "--out", str(tmp_path / "b"), "--no-progress",
                 "--set", "seed=4", "--init", "adam-equivalent"]) == 0
    prov = from_pretrained(tmp_path / "b").provenance
    assert prov["meta_train_config"]["meta_steps"] == 3 and prov["meta_train_config"]["seed"] == 4
    assert prov["init"] == "adam-equivalent"


def test_cli_resume_and_errors(tmp_path, capsys):
    out = str(tmp_path / "r")
    assert main(["meta-train", "--config", "tiny", "--out", out, "--no-progress"]) == 0
    # a finished run resumes to the same place
    assert main(["meta-train", "--config", "tiny", "--out", out, "--no-progress", "--resume"]) == 0
    capsys.readouterr()
    assert main(["meta-train", "--config", "tiny", "--out", out, "--no-progress"]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["meta-train", "--config", "nope", "--out", out]) == 2
    assert "neither a preset" in capsys.readouterr().err
    assert main(["meta-train", "--config", "tiny", "--out", str(tmp_path / "x"), "--set", "estimator=adam"]) == 2
    assert "estimator must be one of" in capsys.readouterr().err
    assert main(["meta-train", "--config", "tiny", "--out", str(tmp_path / "y"), "--set", "oops"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err


def test_cli_save_evals_and_val_baselines(tmp_path, capsys):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    assert main(["meta-train", "--config", "tiny", "--out", a, "--no-progress", "--save-evals"]) == 0
    assert sorted(p.name for p in (tmp_path / "a" / "evals").iterdir()) == ["step0", "step3", "step6"]
    assert main(["meta-train", "--config", "tiny", "--out", b, "--no-progress",
                 "--val-baselines", str(tmp_path / "a" / "val_baselines.json")]) == 0
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()
    capsys.readouterr()
    assert main(["meta-train", "--config", "tiny", "--out", str(tmp_path / "c"), "--no-progress",
                 "--val-baselines", str(tmp_path / "none.json")]) == 2
    assert "val_baselines=" in capsys.readouterr().err
    assert main(["meta-train", "--config", "few-shot", "--out", str(tmp_path / "d"), "--save-evals"]) == 2
    assert "--save-evals" in capsys.readouterr().err
