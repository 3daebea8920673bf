"""Tests of ``learned-optim benchmark transformer``: the models (sizes, causal masking), the
runner's determinism and argument checks, and a quick end-to-end run that writes the three files.

Run: ``python -m pytest tests/test_benchmark_transformer.py`` (about 20 s on 2 cores). The
end-to-end test checks that the outputs are well formed, never how good the numbers are.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # a checkout that is not pip-installed

from learned_optim import LearnedOptimizer  # noqa: E402
from learned_optim.benchmarking import transformer  # noqa: E402
from learned_optim.benchmarking.transformer_models import (  # noqa: E402
    GPT,
    ViT,
    ViTDigits,
    count_params,
    param_groups,
)
from learned_optim.cli import main  # noqa: E402

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # the machine is shared
    yield
    torch.set_num_threads(old)


def test_gpt_size_and_shapes():
    torch.manual_seed(0)
    model = GPT()
    assert count_params(model) == 834_304  # the docstring's and the report's figure
    assert model(torch.randint(0, 256, (2, 64))).shape == (2, 64, 256)
    assert model.tok.weight is next(model.parameters())  # tied: counted once
    with pytest.raises(ValueError, match="context"):
        model(torch.zeros(1, 65, dtype=torch.long))
    with pytest.raises(ValueError, match="n_heads"):
        GPT(d_model=130, n_heads=4)


def test_vit_size_and_shapes():
    torch.manual_seed(0)
    model = ViT()
    assert count_params(model) == 202_186
    assert model(torch.rand(5, 64)).shape == (5, 10)
    with pytest.raises(ValueError, match="patch_size"):
        ViT(patch_size=3)


def test_gpt_is_causal():
    torch.manual_seed(0)
    model = GPT().eval()
    x = torch.randint(0, 256, (1, 64))
    y = x.clone()
    y[0, 40] = (x[0, 40] + 1) % 256
    with torch.no_grad():
        a, b = model(x), model(y)
    torch.testing.assert_close(a[:, :40], b[:, :40], rtol=0, atol=0)  # positions before the change: identical
    assert not torch.allclose(a[:, 40:], b[:, 40:])


def test_param_groups_decay_matrices_only():
    groups = param_groups(GPT(), 0.1)
    decay, rest = groups
    assert decay["weight_decay"] == 0.1 and rest["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() == 1 for p in rest["params"])
    assert "tok.weight" in decay["param_names"] and "ln_f.bias" in rest["param_names"]


def test_schedule():
    steps = 100
    f = [transformer.lr_factor(s, steps) for s in range(steps)]
    assert f[0] == pytest.approx(0.2) and f[4] == pytest.approx(1.0)  # 5 warmup steps
    assert f[-1] == pytest.approx(transformer.FINAL_LR_FRAC)
    assert all(a >= b for a, b in zip(f[4:], f[5:]))


def test_same_seed_same_losses():
    wl = ViTDigits(steps=4, batch_size=16)
    eval_steps = transformer.evaluation_steps(4)

    def run(seed, make=lambda g: torch.optim.AdamW(g, lr=1e-3)):
        return transformer.train_once(wl, make, seed, 4, eval_steps)

    a, b, c = run(0), run(0), run(1)
    learned = [run(0, lambda g: LearnedOptimizer(g, lr=1e-3))["curve"] for _ in range(2)]
    assert learned[0] == learned[1]
    assert a["curve"] == b["curve"] and a["train_curve"] == b["train_curve"] and a["test_acc"] == b["test_acc"]
    assert a["curve"][0] != c["curve"][0]  # another seed: another initialisation
    assert len(a["curve"]) == len(eval_steps) and all(math.isfinite(v) for v in a["curve"])
    assert a["min"] == min(a["curve"]) and not a["diverged"] and a["train_loss"] is not None


def test_divergence_is_recorded():
    wl = ViTDigits(steps=3, batch_size=8)
    r = transformer.train_once(wl, lambda g: torch.optim.SGD(g, lr=1e30), 0, 3, [0, 1, 2, 3])
    assert r["diverged"] and r["diverged_at"] is not None and math.isnan(r["final"])
    assert math.isfinite(r["min"])  # step 0's loss


@pytest.mark.parametrize("kwargs, name", [
    ({"seeds": 0}, "seeds"),
    ({"threads": 0}, "threads"),
    ({"workloads": ["gpt-bytes"]}, "workloads"),
    ({"workloads": []}, "workloads"),
    ({"steps": {"vit-digits": 0}}, "steps"),
    ({"workloads": ["gpt-byte"], "steps": {"vit-digits": 5}}, "steps"),
    ({"learned_lrs": [0.0]}, "--learned-lrs"),
    ({"adamw_lrs": []}, "--adamw-lrs"),
    ({"adamw_lrs": [1e-3, 1e-3]}, "--adamw-lrs"),
])
def test_bad_arguments(tmp_path, kwargs, name):
    with pytest.raises(ValueError, match=name):
        transformer.run_transformer(out=tmp_path, progress=False, **kwargs)
    assert not list(tmp_path.iterdir())  # refused before any work


@pytest.mark.parametrize("argv, name", [
    (["--learned-lrs", "1e-3,abc"], "--learned-lrs"),
    (["--steps", "gpt-byte:5"], "--steps"),
    (["--seeds", "0"], "--seeds"),
    (["--workloads", "gpt"], "workloads"),
    (["--weights", "no-such-weights"], "--weights"),
])
def test_cli_errors(tmp_path, capsys, argv, name):
    assert main(["benchmark", "transformer", "--out", str(tmp_path), *argv]) == 2
    assert name in capsys.readouterr().err


def test_quick_run_writes_three_files(tmp_path, capsys):
    out = tmp_path / "res"
    argv = ["benchmark", "transformer", "--quick", "--seeds", "1", "--steps", "3", "--learned-lrs", "1e-3,3e-4",
            "--no-progress", "--out", str(out)]
    assert main(argv) == 0
    for name in transformer.OUTPUT_FILES:
        assert (out / name).stat().st_size > 0
    assert (out / "transformer.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    res = json.loads((out / "transformer.json").read_text(encoding="utf-8"))
    assert res["complete"] and res["corpus_id"].startswith("cpython-") and "learned-optim" in res["command"]
    gpt, vit = res["workloads"]["gpt-byte"], res["workloads"]["vit-digits"]
    assert gpt["params"] == 834_304 and vit["params"] == 202_186
    assert set(gpt["runs"]) == {"adamw_lr=0.0003", "adamw_lr=0.001", "adamw_lr=0.003", "learned_lr=0.001",
                                "learned_lr=0.0003"}
    assert len(gpt["runs"]["learned_lr=0.001"]["curve"][0]) == len(gpt["eval_steps"]) == 4
    assert gpt["summary"]["learned_default"] == "learned_lr=0.001"
    md = (out / "transformer.md").read_text(encoding="utf-8")
    assert "QUICK RUN" in md and "learned default (lr 0.001) vs tuned AdamW" in md and "test acc" in md
    # results already there are kept unless --force
    assert main(argv) == 2 and "--force" in capsys.readouterr().err
    assert transformer.rerender(out / "transformer.json", figure=False)["workloads"]["gpt-byte"]["summary"]


def test_reused_adamw_runs_equal_fresh_ones(tmp_path, capsys):
    base = ["benchmark", "transformer", "--quick", "--workloads", "vit-digits", "--steps", "3", "--adamw-lrs", "1e-3",
            "--learned-lrs", "1e-3", "--no-progress"]
    assert main([*base, "--seeds", "1", "--out", str(tmp_path / "a")]) == 0
    assert main([*base, "--seeds", "2", "--out", str(tmp_path / "b")]) == 0
    assert main([*base, "--seeds", "2", "--out", str(tmp_path / "c"),
                 "--reuse-adamw", str(tmp_path / "a" / "transformer.json")]) == 0
    fresh, reused = (json.loads((tmp_path / d / "transformer.json").read_text(encoding="utf-8")) for d in "bc")
    assert reused["reused_adamw"]["runs"] == 1  # seed 0 copied, seed 1 run
    runs, fresh_runs = reused["workloads"]["vit-digits"]["runs"], fresh["workloads"]["vit-digits"]["runs"]
    for key in ("adamw_lr=0.001", "learned_lr=0.001"):
        assert runs[key]["curve"] == fresh_runs[key]["curve"]
    assert "1 AdamW runs copied from" in (tmp_path / "c" / "transformer.md").read_text(encoding="utf-8")
    # another recipe (here: thread count) cannot be reused; a missing file is a CLI error
    with pytest.raises(ValueError, match="reuse_adamw=.*other threads"):
        transformer.run_transformer(workloads=["vit-digits"], seeds=1, steps={"vit-digits": 2}, adamw_lrs=[1e-3],
                                    learned_lrs=[1e-3], quick=True, threads=2, out=tmp_path / "d", progress=False,
                                    reuse_adamw=tmp_path / "a" / "transformer.json")
    assert main([*base, "--out", str(tmp_path / "e"), "--reuse-adamw", str(tmp_path / "nope.json")]) == 2
    assert "--reuse-adamw" in capsys.readouterr().err


def _fake_run(optimizer, lr, final):
    n = len(final)
    return {"optimizer": optimizer, "lr": lr, "seeds": list(range(n)), "final": final, "min": final,
            "diverged": [False] * n, "test_acc": [None] * n, "train_loss": [None] * n, "wall_s": [1.0] * n,
            "step_ms": [1.0] * n}


def test_only_the_run_at_the_default_lr_is_the_learned_default():
    runs = {"adamw_lr=0.001": _fake_run("adamw", 1e-3, [2.0, 2.1]),
            "learned_lr=0.0003": _fake_run("learned", 3e-4, [1.9, 2.0]),
            "learned_lr=0.001": _fake_run("learned", 1e-3, [2.2, 2.3])}
    assert transformer.summarize({"runs": runs})["learned_default"] == "learned_lr=0.001"
    del runs["learned_lr=0.001"]
    summary = transformer.summarize({"runs": runs})
    assert "learned_default" not in summary and summary["learned_best"] == "learned_lr=0.0003"
