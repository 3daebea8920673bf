"""Tests of the benchmarks: both ``--quick`` modes end to end, the command line's errors, and
the bookkeeping they rely on.

Run: ``python -m pytest tests/test_benchmarks.py`` (a few minutes on 2 cores: the quick runs).
The end-to-end tests check that the outputs are well formed, never how fast or how good the
numbers are (timed assertions would be flaky and are not allowed here).
"""

from __future__ import annotations

import ast
import json
import math
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # a checkout that is not pip-installed

from learned_optim.benchmarking import cpu_paths, quality, quality_report, quality_stats, speed, tasks  # noqa: E402
from learned_optim.benchmarking.common import DEFAULT_OUT, check_out_dir  # noqa: E402
from learned_optim.cli import main  # noqa: E402
from learned_optim.common import adam_baseline, machine  # noqa: E402
from learned_optim.network import LSTMOptimizerConfig  # noqa: E402

_ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def _benchmark(which: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``learned-optim benchmark WHICH ARGS`` in a fresh process."""
    return subprocess.run([sys.executable, "-m", "learned_optim.cli", "benchmark", which, *args],
                          cwd=cwd, capture_output=True, text=True, timeout=600, env=_ENV)


def _run_script(name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / f"{name}.py"), *args],
                          cwd=cwd, capture_output=True, text=True, timeout=600, env=_ENV)


def _check_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    width, height = struct.unpack(">II", data[16:24])  # IHDR, the first chunk
    assert width > 100 and height > 100


def _strict_json(path: Path) -> dict:
    def no_constants(name):  # NaN / Infinity are not JSON; the writer must have replaced them
        raise AssertionError(f"{path} contains {name}")

    return json.loads(path.read_text(encoding="utf-8"), parse_constant=no_constants)


@pytest.fixture(scope="module")
def quality_quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("quality")
    # adam-equivalent (Adam by construction) so that test_untrained_weights_tie_adam can check
    # that every optimizer saw the same data and initialisations; the well-formedness checks
    # do not depend on the weights.
    proc = _benchmark("quality", "--quick", "--no-progress", "--weights", "adam-equivalent", "--out", str(out),
                      cwd=out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def speed_quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("speed")
    proc = _benchmark("speed", "--quick", "--no-progress", "--out", str(out), cwd=out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_quality_quick_outputs_are_well_formed(quality_quick):
    res = _strict_json(quality_quick / "quality.json")
    assert res["benchmark"] == "quality" and res["settings"]["quick"] is True
    assert "learned-optim benchmark quality --quick" in res["command"]
    assert res["machine"]["cpu_count"] >= 1 and res["machine"]["torch"]
    seeds = len(res["settings"]["seeds"])
    assert seeds == quality.QUICK_SEEDS
    assert list(res["tasks"]) == tasks.task_names()
    for name, t in res["tasks"].items():
        eval_steps = t["eval_steps"]
        assert eval_steps[0] == 0 and eval_steps[-1] == t["steps"] and eval_steps == sorted(set(eval_steps))
        expected_runs = {"learned", "adamw", "sgd_momentum"} | {f"adam_lr={lr:g}" for lr in quality.ADAM_LR_GRID}
        assert set(t["runs"]) == expected_runs
        for key, run in t["runs"].items():
            assert len(run["curve"]) == len(run["final"]) == len(run["diverged"]) == seeds, (name, key)
            for curve, final, diverged in zip(run["curve"], run["final"], run["diverged"]):
                assert len(curve) == len(eval_steps)
                assert curve[-1] == final
                # A diverged run (null = NaN) must be flagged as such.
                if final is None:
                    assert diverged
        cols = t["summary"]["columns"]
        assert set(cols) == {o.key for o in quality.OPTIMIZERS} | {quality.SUITE_KEY}
        assert cols[quality.SUITE_KEY]["lr"] == res["suite_adam"]["lr"] in quality.ADAM_LR_GRID
        assert t["summary"]["adam_tuned_lr"] in quality.ADAM_LR_GRID
        assert t["tuning_cost"]["adam_runs"] == len(quality.ADAM_LR_GRID) * seeds
        for base in quality.BASELINES:
            v = t["summary"]["vs"][base]
            assert v["seed_wins"] + v["seed_ties"] + v["seed_losses"] == seeds
            assert v["task_verdict"] in (-1, 0, 1)
    assert "corpus" in res["tasks"]["char_gru_lm"]
    assert set(res["totals"]["geomean_ratio_to_adam_tuned"]) == set(cols)
    assert res["totals"]["geomean_ratio_to_adam_tuned"]["adam_tuned"] == 1.0
    for base in (*quality.BASELINES, quality.SUITE_KEY):
        tot = res["totals"][base]
        assert tot["tasks_won"] + tot["tasks_tied"] + tot["tasks_lost"] == len(res["tasks"])

    md = (quality_quick / "quality.md").read_text(encoding="utf-8")
    assert "QUICK RUN" in md and res["command"] in md
    main_md, _, heldout_md = md.partition("## Held-out loss")
    for part in (main_md, heldout_md):  # the training-loss table, then the held-out one
        table_rows = [line for line in part.splitlines() if line.startswith("| ") and "±" in line]
        assert len(table_rows) == len(res["tasks"])
        for name in res["tasks"]:
            assert any(row.startswith(f"| {name}") for row in table_rows)
    _check_png(quality_quick / "quality.png")


def test_quality_quick_records_heldout_loss_and_minima(quality_quick):
    res = _strict_json(quality_quick / "quality.json")
    for name, t in res["tasks"].items():
        problem = tasks.get_task(name).problem()
        assert problem.has_heldout and t["split"] == problem.split
        assert t["split"]["train"] == len(problem.inputs) and t["split"]["heldout"] > 0
        for key, run in t["runs"].items():
            assert len(run["heldout_final"]) == len(run["heldout_curve"]) == len(run["min_loss"]) == len(run["final"])
            for curve, hcurve, hfinal, low in zip(run["curve"], run["heldout_curve"], run["heldout_final"],
                                                  run["min_loss"]):
                assert len(hcurve) == len(curve) and hcurve[-1] == hfinal
                assert hfinal is not None and math.isfinite(hfinal), (name, key)
                assert low == min(v for v in curve if v is not None)
        s = t["summary"]
        assert s["has_heldout"] and all(math.isfinite(c["heldout_mean"]) for c in s["columns"].values())
        assert all("heldout" in v for v in s["vs"].values())
    tot = res["totals"]["heldout"]
    assert tot["tasks"] == len(res["tasks"])
    for base in (*quality.BASELINES, quality.SUITE_KEY):
        assert tot[base]["tasks_won"] + tot[base]["tasks_tied"] + tot[base]["tasks_lost"] == len(res["tasks"])
    md = (quality_quick / "quality.md").read_text(encoding="utf-8")
    assert "## Held-out loss" in md and "median held-out loss ratio" in md and "chosen on training loss" in md
    assert "## Late spikes" in md


def test_untrained_weights_tie_adam(quality_quick):
    """Same seeds, same batches: weights that are Adam by construction must tie Adam (lr 1e-3)
    on every task. This fails if the optimizers saw different data or initialisations."""
    res = _strict_json(quality_quick / "quality.json")
    assert res["weights"]["provenance"].get("trained") is False
    assert res["totals"]["adam"]["tasks_tied"] == len(res["tasks"])
    assert res["totals"]["heldout"]["adam"]["tasks_tied"] == len(res["tasks"])
    for t in res["tasks"].values():
        assert t["summary"]["vs"]["adam"]["speedup"] == pytest.approx(1.0)


def test_speed_quick_outputs_are_well_formed(speed_quick):
    res = _strict_json(speed_quick / "speed.json")
    assert res["benchmark"] == "speed" and res["settings"]["quick"] is True
    keys = {c.key for c in speed.CONFIGS}
    assert [e["n_params"] for e in res["sizes"]] == sorted(e["n_params"] for e in res["sizes"])
    assert len(res["sizes"]) == len(speed.QUICK_SIZES)
    mp = res["machine_peaks"]
    assert mp["best_matmul_flops_per_s"] > 0 and mp["copy_bytes_per_s"] > 0
    for e in res["sizes"]:
        assert set(e["timing"]) == keys and set(e["memory"]) == keys
        for k in keys:
            t = e["timing"][k]
            assert 0 < t["min_s"] <= t["median_s"] <= t["max_s"] and t["repeats"] >= speed.MIN_REPEATS
            m = e["memory"][k]
            assert m["state_bytes"] > 0 and m["peak_extra_bytes"] >= 0
        # The learned state is m, v, h, c in fp32: (2 + 2H) * 4 bytes per parameter.
        h = res["weights"]["config"]["hidden_size"]
        assert e["memory"]["learned"]["state_bytes_per_param"] == pytest.approx((2 + 2 * h) * 4, rel=1e-3)
        assert e["memory"]["adam_fused"]["state_bytes_per_param"] == pytest.approx(8, rel=1e-3)
        f = e["floor"]
        assert f["floor_s"] == max(f["compute_s"], f["bytes_s"]) > 0
        assert f["measured_over_floor"] == pytest.approx(e["timing"]["learned"]["median_s"] / f["floor_s"])
    assert set(res["training_step"]["timing"]) == keys
    # every CPU path ran or says why not; the eager path never builds the C loop
    cp = res["cpu_paths"]
    assert set(cp["paths"]) | set(cp["skipped"]) == {p.key for p in cpu_paths.CPU_PATHS}
    assert "eager" in cp["paths"] and cp["paths"]["eager"]["median_s"] > 0
    for v in cp["paths"].values():
        assert 0 < v["min_s"] <= v["median_s"] and v["over_compute_floor"] > 0
    if cp["paths"]["native_simd"]["c_loop_built"]:  # a compiler exists here
        assert cp["paths"]["native_portable"]["c_loop_built"]
    md = (speed_quick / "speed.md").read_text(encoding="utf-8")
    assert "QUICK RUN" in md and res["command"] in md
    for heading in ("Optimizer step time", "against its floor", "Memory", "Whole training step",
                    "CPU implementations of the learned step"):
        assert heading in md
    _check_png(speed_quick / "speed.png")


# ---------------------------------------------------------------- bookkeeping, no training

def test_floor_counts_for_the_default_config():
    f = speed.step_floor(LSTMOptimizerConfig(hidden_size=4))
    assert f["flops_matmul"] == 2 * 4 * 4 * (2 + 4) == 192
    assert f["flops_head"] == 16
    # p r+w (8) + g r (4) + m, v, h (4), c (4) r+w in fp32 (2 * 4 * 10 = 80)
    assert f["bytes"] == 92
    assert speed.step_floor(LSTMOptimizerConfig(hidden_size=8))["bytes"] == 12 + 8 * 18


def _fake_task(finals: dict[str, list[float]], curves: dict[str, list[list[float]]] | None = None) -> dict:
    eval_steps = [0, 5, 10]
    runs = {}
    for key, fs in finals.items():
        cs = curves[key] if curves and key in curves else [[1.0, (1.0 + f) / 2, f] for f in fs]
        runs[key] = {"lr": float(key.split("=")[1]) if "=" in key else 1e-3, "final": fs, "curve": cs,
                     "diverged": [adam_baseline.diverged(c[0], c[-1]) for c in cs],
                     "optimizer_step_s": [1e-3] * len(fs)}
    return {"eval_steps": eval_steps, "adam_lr_grid": list(quality.ADAM_LR_GRID), "runs": runs}


def _grid(values: dict[float, list[float]], default: list[float]) -> dict[str, list[float]]:
    out = {f"adam_lr={lr:g}": default for lr in quality.ADAM_LR_GRID}
    out.update({f"adam_lr={lr:g}": v for lr, v in values.items()})
    return out


def test_summary_picks_the_best_grid_lr_and_treats_nan_as_worst():
    finals = {"learned": [0.5, 0.5], "adamw": [0.6, 0.6], "sgd_momentum": [math.nan, 0.1],
              **_grid({1e-2: [0.2, 0.3], 1e-1: [math.nan, 0.01]}, [0.9, 0.9])}
    s = quality.summarize(_fake_task(finals))
    assert s["adam_tuned_lr"] == 1e-2  # 1e-1 has a NaN seed: its mean is NaN, never "best"
    assert s["columns"]["adam_tuned"]["final_mean"] == pytest.approx(0.25)
    assert s["vs"]["adamw"]["task_verdict"] == -1 and s["vs"]["adamw"]["seed_wins"] == 2
    assert s["vs"]["adam_tuned"]["task_verdict"] == 1
    # SGD: one NaN seed (a learned win) and one better seed (a learned loss).
    assert (s["vs"]["sgd_momentum"]["seed_wins"], s["vs"]["sgd_momentum"]["seed_losses"]) == (1, 1)
    assert s["columns"]["sgd_momentum"]["diverged"] == 1


def test_speedup_counts_the_steps_to_reach_adams_final_loss():
    # Learned reaches Adam's final loss 0.2 at step 5, Adam at step 10: learned is 2x faster.
    finals = {"learned": [0.1], "adamw": [0.5], "sgd_momentum": [0.5], **_grid({}, [0.2])}
    curves = {"learned": [[1.0, 0.2, 0.1]], **{f"adam_lr={lr:g}": [[1.0, 0.5, 0.2]] for lr in quality.ADAM_LR_GRID}}
    s = quality.summarize(_fake_task(finals, curves))
    v = s["vs"]["adam"]
    assert (v["baseline_steps_to_reach"], v["learned_steps_to_reach"], v["speedup"]) == (10, 5, pytest.approx(2.0))
    # Learned ends above Adam (0.5 > 0.2): "not reached", never a speed-up.
    finals["learned"] = [0.5]
    curves["learned"] = [[1.0, 0.75, 0.5]]
    v = quality.summarize(_fake_task(finals, curves))["vs"]["adam"]
    assert v["speedup"] is None and v["note"] == "learned ends above"


def test_no_speedup_when_the_learned_optimizer_loses_with_a_noisy_curve():
    # Regression (quick run, breast_cancer_mlp_long printed 9.00x on a lost task): the learned
    # mean curve dips early to its own (poor) final loss, and even below Adam's final loss, then
    # comes back up and ends 3x above Adam. The old rule (steps for Adam to reach the learned
    # final loss / steps for learned to reach it) gave 9x; the learned optimizer lost: no speed-up.
    eval_steps = list(range(0, 101, 4))
    learned = [0.69, 0.16, 0.17, 0.2, 0.12, 0.09, 0.06] + [0.1] * 17 + [0.18, 0.24]
    adam = [0.69 - 0.0245 * i for i in range(len(eval_steps))]
    adam[-1] = 0.08
    task = {"eval_steps": eval_steps, "adam_lr_grid": list(quality.ADAM_LR_GRID), "runs": {}}
    for key in ("learned", "adamw", "sgd_momentum", *(f"adam_lr={lr:g}" for lr in quality.ADAM_LR_GRID)):
        c = learned if key == "learned" else adam
        task["runs"][key] = {"lr": 1e-3, "final": [c[-1]], "curve": [c], "diverged": [False],
                             "optimizer_step_s": [1e-3]}
    s = quality.summarize(task)
    for base in ("adam", "adam_tuned"):
        v = s["vs"][base]
        assert v["task_verdict"] == 1 and v["speedup"] is None and v["note"] == "learned ends above"
    assert quality_report._speedup(s["vs"]["adam"]) == "not reached (ends 3x higher)"


def test_identical_curves_give_a_speedup_of_one_even_when_noisy():
    # The curve dips below its final value before the end (minibatch noise): both optimizers
    # first reach the target at step 5, so the speed-up is exactly 1.
    curve = [[1.0, 0.4, 0.5]]
    finals = {"learned": [0.5], "adamw": [0.5], "sgd_momentum": [0.5], **_grid({}, [0.5])}
    curves = {k: curve for k in finals}
    s = quality.summarize(_fake_task(finals, curves))
    assert s["vs"]["adam"]["speedup"] == 1.0 and s["vs"]["adam"]["baseline_steps_to_reach"] == 5


def _fake_results(per_task: dict[str, dict[float, float]], learned: dict[str, float]) -> dict:
    """A results dict (no training) whose grid runs have the given mean finals per task and lr."""
    tasks_ = {}
    for name, by_lr in per_task.items():
        finals = {"learned": [learned[name]], "adamw": [1.0], "sgd_momentum": [1.0],
                  **{f"adam_lr={lr:g}": [by_lr[lr]] for lr in quality.ADAM_LR_GRID}}
        tasks_[name] = _fake_task(finals)
    opts = {o.key: {"label": o.label, "lr": o.lr} for o in quality.OPTIMIZERS}
    return {"settings": {"adam_lr_grid": list(quality.ADAM_LR_GRID), "optimizers": opts}, "tasks": tasks_}


def test_best_single_lr_minimises_the_geometric_mean_ratio_to_tuned():
    grid = quality.ADAM_LR_GRID
    # Task a is best at grid[2] (lr 1e-3), task b at grid[4] (1e-2). grid[3] is 2x off on both
    # (geomean 2); grid[2] is exact on a but 10x off on b (geomean sqrt(10) > 2).
    a = {lr: 1.0 for lr in grid} | {grid[2]: 0.1, grid[3]: 0.2}
    b = {lr: 1.0 for lr in grid} | {grid[4]: 0.1, grid[3]: 0.2, grid[2]: 1.0}
    b[grid[5]] = math.nan  # a diverged seed: this lr is never the suite's best
    res = quality.finish(_fake_results({"a": a, "b": b}, {"a": 0.1, "b": 0.4}))
    assert res["suite_adam"]["lr"] == grid[3]
    assert res["suite_adam"]["geomean_ratio_to_tuned"] == pytest.approx(2.0)
    assert res["suite_adam"]["by_lr"][f"{grid[5]:g}"] is None or not math.isfinite(
        res["suite_adam"]["by_lr"][f"{grid[5]:g}"])
    cols = res["tasks"]["a"]["summary"]["columns"]
    assert cols[quality.SUITE_KEY]["lr"] == grid[3] and cols[quality.SUITE_KEY]["final_mean"] == 0.2
    assert list(res["settings"]["optimizers"])[-2:] == [quality.SUITE_KEY, "adam_tuned"]
    geo = res["totals"]["geomean_ratio_to_adam_tuned"]
    assert geo["learned"] == pytest.approx(2.0) and geo[quality.SUITE_KEY] == pytest.approx(2.0)
    assert res["totals"][quality.SUITE_KEY]["tasks_won"] == 1  # a: 0.1 < 0.2; b: 0.4 > 0.2
    for t in res["tasks"].values():
        t.update(description="d", steps=10, batch_size=1, long_horizon=False,
                 tuning_cost={"adam_runs": 7, "optimizer_steps": 70})
    res["settings"].update(quick=True, seeds=[0], tie_rtol=quality.TIE_RTOL)
    machine = {"date_utc": "d", "cpu": "c", "cpu_count": 1, "torch_threads": 1, "platform": "p", "python": "3",
               "torch": "2"}
    md = quality_report.quality_markdown(res | {"weights": {"name": "w", "is_default": False}, "command": "c",
                                                "machine": machine, "wall_s": 1.0})
    assert "Adam, best single lr" in md and "geometric mean ratio to Adam tuned" in md


@pytest.mark.parametrize("flags, isa", [("fpu avx2 fma avx512f avx512bw", "AVX-512"), ("fpu avx avx2 fma", "AVX2"),
                                        ("fpu sse2 avx", "no AVX2")])
def test_machine_records_cpu_family_model_and_vector_isa(flags, isa):
    """One model name covers CPUs whose results differ (an AVX-512 and an AVX2 build of the C loop):
    the results header names the family, model and widest vector ISA beside it."""
    info = {"model name": "AMD EPYC", "cpu family": "23", "model": "49", "flags": flags}
    assert machine._cpu_id(info) == f"family 23 model 49, {isa}"
    assert machine._cpu_id({}) is None  # no /proc/cpuinfo (another OS): nothing is made up
    m = machine.machine_info(1)
    assert m["cpu"] and "cpu_id" in m
    line = machine.machine_line({**m, "cpu": "X", "cpu_id": "family 1 model 2, AVX2"})
    assert line.startswith("X [family 1 model 2, AVX2] (")
    assert machine.machine_line({**m, "cpu": "X", "cpu_id": None}).startswith("X (")


def test_divergence_rule():
    assert adam_baseline.diverged(1.0, math.nan)
    assert adam_baseline.diverged(1.0, 1.5)
    assert not adam_baseline.diverged(1.0, 0.9)


def test_compare_ties_within_tolerance():
    assert quality._compare(1.0, 1.0 + 0.5 * quality.TIE_RTOL) == 0
    assert quality._compare(1.0, 1.1) == -1
    assert quality._compare(math.nan, 1.0) == 1


@pytest.mark.parametrize("args, needle", [
    (["quality", "--seeds", "0"], "--seeds"),
    (["quality", "--tasks", "no_such_task"], "no_such_task"),
    (["quality", "--weights", "no_such_weights_here"], "--weights"),
    (["speed", "--sizes", "3"], "--sizes"),
    (["speed", "--seeds", "2"], "--seeds"),
    (["speed", "--learned-kwargs", '{"no_such_option": 1}'], "no_such_option"),
    (["quality", "--learned-kwargs", "not json"], "--learned-kwargs"),
])
def test_bad_options_are_refused_with_a_readable_error(args, needle, tmp_path):
    proc = _benchmark(args[0], *args[1:], "--out", str(tmp_path / "o"), cwd=tmp_path)
    assert proc.returncode == 2
    assert needle in proc.stderr and "Traceback" not in proc.stderr


def test_quality_takes_a_weights_directory(tmp_path):
    """The meta-training workflow: --weights DIR --out DIR on a subset of tasks."""
    import torch

    from learned_optim import CoordinatewiseLSTM

    net = CoordinatewiseLSTM(seed=3, provenance={"note": "test weights", "trained": True})
    with torch.no_grad():
        net.head_weight.normal_(0, 0.5)  # a non-Adam rule
    wdir = tmp_path / "my-weights"
    net.save_pretrained(wdir)
    out = tmp_path / "out"
    proc = _benchmark("quality", "--quick", "--no-progress", "--weights", str(wdir), "--out", str(out),
                      "--tasks", "wine_mlp", "diabetes_mse", "--seeds", "1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = _strict_json(out / "quality.json")
    assert res["weights"]["path"] == str(wdir) and res["weights"]["is_default"] is False
    assert res["weights"]["provenance"]["trained"] is True
    assert list(res["tasks"]) == ["wine_mlp", "diabetes_mse"]
    md = (out / "quality.md").read_text(encoding="utf-8")
    assert "untrained" not in md and str(wdir) in md


def test_out_must_not_be_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        quality.run_quality(quick=True, out=f, progress=False)


_QUICK_WINE = ["benchmark", "quality", "--quick", "--no-progress", "--tasks", "wine_mlp"]


@pytest.fixture(scope="module")
def quality_wine_one_seed(tmp_path_factory):
    """A quick quality.json of wine_mlp, one seed (a second or two): the earlier result to reuse."""
    out = tmp_path_factory.mktemp("quality-wine")
    assert main([*_QUICK_WINE, "--seeds", "1", "--out", str(out)]) == 0
    return out / "quality.json"


def test_reused_baselines_equal_fresh_runs(quality_wine_one_seed, tmp_path):
    """--reuse-baselines copies each baseline run (per task and seed) of an earlier quality.json made
    under the same settings; seeds and tasks it lacks are run, the learned optimizer always is, and
    the copies equal fresh runs exactly (the runs are deterministic)."""
    two = [*_QUICK_WINE, "diabetes_mse", "--seeds", "2"]
    assert main([*two, "--out", str(tmp_path / "fresh")]) == 0
    assert main([*two, "--out", str(tmp_path / "reused"), "--reuse-baselines", str(quality_wine_one_seed)]) == 0
    first = _strict_json(quality_wine_one_seed)
    fresh, reused = (_strict_json(tmp_path / d / "quality.json") for d in ("fresh", "reused"))
    assert "reused_baselines" not in fresh and "--reuse-baselines" in reused["command"]
    first_runs = first["tasks"]["wine_mlp"]["runs"]
    baselines = [k for k in first_runs if k != "learned"]
    assert len(baselines) == len(quality.ADAM_LR_GRID) + 2  # the Adam grid, AdamW, SGD+momentum
    # seed 0 of wine_mlp's baselines copied; its seed 1, diabetes_mse and the learned optimizer run
    assert reused["reused_baselines"] == {"from": str(quality_wine_one_seed), "runs": len(baselines)}
    per_seed = quality._RUN_FIELDS + quality._HELDOUT_FIELDS
    for name in ("wine_mlp", "diabetes_mse"):
        runs, fresh_runs = reused["tasks"][name]["runs"], fresh["tasks"][name]["runs"]
        assert runs.keys() == fresh_runs.keys()
        for key, run in runs.items():
            assert run.keys() == fresh_runs[key].keys() and set(per_seed) <= run.keys()
            for k in ("curve", "final", "initial", "min_loss", "diverged", "heldout_curve", "heldout_final"):
                assert run[k] == fresh_runs[key][k], (name, key, k)
            if name == "wine_mlp" and key != "learned":  # copied, wall times and all
                assert all(run[k][0] == first_runs[key][k][0] for k in per_seed), key
    assert reused["tasks"]["wine_mlp"]["runs"]["learned"]["wall_s"][0] != first_runs["learned"]["wall_s"][0]
    for name, t in reused["tasks"].items():  # the same tables, timings apart
        for k in ("adam_tuned_lr", "vs"):
            assert t["summary"][k] == fresh["tasks"][name]["summary"][k], (name, k)
    assert reused["suite_adam"]["lr"] == fresh["suite_adam"]["lr"]
    line = f"{len(baselines)} baseline runs copied from `{quality_wine_one_seed}`"
    assert line in (tmp_path / "reused" / "quality.md").read_text(encoding="utf-8")
    # the result rerenders, keeping the note
    again = quality.rerender(tmp_path / "reused" / "quality.json", figure=False)
    assert again["reused_baselines"] == reused["reused_baselines"]
    assert line in (tmp_path / "reused" / "quality.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("edit, needle", [
    (lambda r: r["machine"].update(torch="1.0.0"), "other torch version"),
    (lambda r: r["settings"].update(adam_lr_grid=[1e-3]), "other adam_lr_grid"),
    (lambda r: r["settings"].update(eval_points=10), "other eval_points"),
    (lambda r: r["settings"]["optimizers"]["adamw"].update(lr=3e-4), "other baseline optimizers"),
    (lambda r: r.update(benchmark="speed"), "not a quality benchmark result"),
    (lambda r: r["tasks"]["wine_mlp"].pop("runs"), "not a well-formed quality.json"),
])
def test_reuse_baselines_refuses_a_file_made_otherwise(quality_wine_one_seed, tmp_path, edit, needle):
    res = json.loads(quality_wine_one_seed.read_text(encoding="utf-8"))
    edit(res)
    (tmp_path / "other.json").write_text(json.dumps(res), encoding="utf-8")
    with pytest.raises(ValueError, match=f"reuse_baselines=.*{needle}.*drop --reuse-baselines"):
        quality.run_quality(quick=True, seeds=1, task_filter=["wine_mlp"], out=tmp_path / "o", progress=False,
                            reuse_baselines=tmp_path / "other.json")


def test_reuse_baselines_errors(quality_wine_one_seed, tmp_path, capsys):
    """Other settings (here: threads, quick) or a file that is not a quality.json are refused before
    any run, by the API (ValueError naming reuse_baselines) and the CLI (exit 2, one line)."""
    for kwargs, needle in (({"threads": 2}, "other threads"), ({"quick": False}, "other quick")):
        with pytest.raises(ValueError, match=f"reuse_baselines=.*{needle}.*drop --reuse-baselines"):
            quality.run_quality(**{"quick": True, **kwargs}, seeds=1, task_filter=["wine_mlp"],
                                out=tmp_path / "o", progress=False, reuse_baselines=quality_wine_one_seed)
    (tmp_path / "bad.json").write_text("not json", encoding="utf-8")
    with pytest.raises(ValueError, match="reuse_baselines=.*not a readable quality.json.*drop --reuse-baselines"):
        quality.run_quality(quick=True, seeds=1, task_filter=["wine_mlp"], out=tmp_path / "o", progress=False,
                            reuse_baselines=tmp_path / "bad.json")
    assert not (tmp_path / "o" / "quality.json").exists()
    capsys.readouterr()
    assert main([*_QUICK_WINE, "--out", str(tmp_path / "e"), "--reuse-baselines", str(tmp_path / "nope.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert "--reuse-baselines" in err and "is not a file" in err and len(err.splitlines()) == 1
    assert main([*_QUICK_WINE, "--threads", "2", "--out", str(tmp_path / "e"),
                 "--reuse-baselines", str(quality_wine_one_seed)]) == 2
    err = capsys.readouterr().err.strip()
    assert "reuse_baselines=" in err and "other threads" in err and len(err.splitlines()) == 1


def _one_error_line(proc: subprocess.CompletedProcess, *needles: str) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_existing_results_are_replaced_only_with_force(tmp_path):
    """The default --out is a fresh ./benchmark-results, not the committed benchmarks/results; a
    folder that already holds this benchmark's results is refused (exit 2, before any work)
    unless --force."""
    assert DEFAULT_OUT == "benchmark-results"
    (tmp_path / DEFAULT_OUT).mkdir()
    (tmp_path / DEFAULT_OUT / "quality.json").write_text("{}")
    proc = _benchmark("quality", "--quick", "--no-progress", "--tasks", "wine_mlp", "--seeds", "1", cwd=tmp_path)
    _one_error_line(proc, "learned-optim benchmark quality: error: --out", "quality.json", "--force")
    assert (tmp_path / DEFAULT_OUT / "quality.json").read_text() == "{}"
    # the speed benchmark's files are its own: quality.json does not stop it, speed.md does
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "speed.md").write_text("x")
    proc = _benchmark("speed", "--sizes", "1e4", "--out", str(tmp_path / "o"), cwd=tmp_path)
    _one_error_line(proc, "speed.md", "--force")


@pytest.mark.parametrize("where", ["under_a_file", "in_proc"])
def test_an_uncreatable_out_is_one_line_and_exit_2(tmp_path, where):
    if where == "under_a_file":
        (tmp_path / "file").write_text("x")
        out = tmp_path / "file" / "results"
    else:
        if not Path("/proc/self").is_dir():
            pytest.skip("no /proc here")
        out = Path("/proc/self/no_such_folder/results")  # no one may create folders in /proc
    proc = _benchmark("quality", "--quick", "--no-progress", "--out", str(out), cwd=tmp_path)
    _one_error_line(proc, "--out", str(out), "cannot be created or written")
    with pytest.raises(ValueError, match="cannot be created or written"):
        check_out_dir(out)


def test_rerender_rewrites_the_report_from_the_json_alone(speed_quick, tmp_path):
    for name in ("speed.json", "speed.md"):
        shutil.copy(speed_quick / name, tmp_path / name)
    (tmp_path / "speed.md").write_text("stale")
    saved = (tmp_path / "speed.json").read_bytes()
    assert main(["benchmark", "speed", "--rerender", str(tmp_path / "speed.json")]) == 0
    assert (tmp_path / "speed.md").read_text(encoding="utf-8") == (speed_quick / "speed.md").read_text(encoding="utf-8")
    assert (tmp_path / "speed.json").read_bytes() == saved
    _check_png(tmp_path / "speed.png")
    # a file that is not this benchmark's results: one line, exit 2
    assert main(["benchmark", "quality", "--rerender", str(tmp_path / "speed.json")]) == 2
    assert main(["benchmark", "quality", "--rerender", str(tmp_path / "nothing.json")]) == 2


def test_quality_rerender_adds_the_new_summary_to_an_old_json(quality_quick, tmp_path):
    """A quality.json from before the best-single-lr column and the new speed-up (no
    "suite_adam", no "adam_suite" column or setting) rerenders with both, from its runs alone."""
    res = json.loads((quality_quick / "quality.json").read_text(encoding="utf-8"))
    res.pop("suite_adam")
    res["settings"]["optimizers"].pop(quality.SUITE_KEY)
    res["totals"].pop("geomean_ratio_to_adam_tuned")
    for t in res["tasks"].values():
        t["summary"]["columns"].pop(quality.SUITE_KEY)
        for v in t["summary"]["vs"].values():
            for k in ("baseline_steps_to_reach", "note", "target"):
                v.pop(k, None)
    (tmp_path / "quality.json").write_text(json.dumps(res))
    assert main(["benchmark", "quality", "--rerender", str(tmp_path / "quality.json")]) == 0
    new = _strict_json(tmp_path / "quality.json")
    assert new["suite_adam"]["lr"] in quality.ADAM_LR_GRID
    assert all(quality.SUITE_KEY in t["summary"]["columns"] for t in new["tasks"].values())
    md = (tmp_path / "quality.md").read_text(encoding="utf-8")
    assert "Adam, best single lr" in md and "geometric mean ratio to Adam tuned" in md


def test_quality_rerender_of_a_json_without_heldout_fields(quality_quick, tmp_path):
    """A quality.json from before held-out losses and min_loss rerenders: no held-out table, the
    late-spike table from the saved curves."""
    res = json.loads((quality_quick / "quality.json").read_text(encoding="utf-8"))
    res["totals"].pop("heldout")
    for t in res["tasks"].values():
        t.pop("split")
        t.pop("summary")
        for run in t["runs"].values():
            for k in ("heldout_curve", "heldout_final", "min_loss"):
                run.pop(k)
    (tmp_path / "quality.json").write_text(json.dumps(res))
    assert main(["benchmark", "quality", "--rerender", str(tmp_path / "quality.json")]) == 0
    new = _strict_json(tmp_path / "quality.json")
    assert "heldout" not in new["totals"]
    assert not any(t["summary"]["has_heldout"] for t in new["tasks"].values())
    md = (tmp_path / "quality.md").read_text(encoding="utf-8")
    assert "Held-out loss" not in md and "## Late spikes" in md
    assert len([line for line in md.splitlines() if line.startswith("| ") and "±" in line]) == len(res["tasks"])
    old = _strict_json(quality_quick / "quality.json")
    for name, t in new["tasks"].items():  # final / min from the curves == from the recorded min_loss
        for col, c in t["summary"]["columns"].items():
            assert c["final_over_min_mean"] == old["tasks"][name]["summary"]["columns"][col]["final_over_min_mean"]
    _check_png(tmp_path / "quality.png")


def _sklearn_raw(name: str):
    import sklearn.datasets

    bunch = getattr(sklearn.datasets, f"load_{name}")()
    return bunch.data, bunch.target


@pytest.mark.parametrize("name", ["wine", "breast_cancer", "iris", "diabetes"])
def test_heldout_split_is_disjoint_fixed_and_80_20(name):
    import numpy as np

    data, target = _sklearn_raw(name)
    d = tasks._sklearn(name)
    train, held = d.train_rows, d.heldout_rows
    assert not set(train) & set(held) and sorted({*train, *held}) == list(range(len(data)))
    assert abs(len(held) / len(data) - 0.2) < 0.01
    assert len(d.x) == len(d.y) == len(train) and len(d.heldout_x) == len(d.heldout_y) == len(held)
    again = tasks._split_rows(len(data), target if name in tasks._STRATIFIED else None)
    assert np.array_equal(again[0], train) and np.array_equal(again[1], held)
    tasks._sklearn.cache_clear()
    d2 = tasks._sklearn(name)
    assert np.array_equal(d2.heldout_rows, held) and bool((d2.heldout_x == d.heldout_x).all())
    if name in tasks._STRATIFIED:  # each class held out at round(20%)
        for c in np.unique(target):
            assert (target[held] == c).sum() == round(0.2 * (target == c).sum())
    np.testing.assert_array_equal(np.asarray(d.y), target[train])


def test_standardization_uses_train_statistics_only():
    import numpy as np

    data, _ = _sklearn_raw("wine")
    d = tasks._sklearn("wine")
    tr, ho = data[d.train_rows], data[d.heldout_rows]
    mean, std = tr.mean(0), tr.std(0)  # population std, as the task
    np.testing.assert_allclose(d.x.numpy(), (tr - mean) / (std + 1e-8), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(d.heldout_x.numpy(), (ho - mean) / (std + 1e-8), rtol=1e-5, atol=1e-6)
    # held-out rows are not standardized with their own statistics
    assert np.abs(d.heldout_x.numpy().mean(0)).max() > 1e-3
    # diabetes: the target too, with the training split's mean and std
    p = tasks.get_task("diabetes_mse").problem()
    assert abs(float(p.targets.mean())) < 1e-5 and abs(float(p.targets.std()) - 1) < 1e-5
    _, target = _sklearn_raw("diabetes")
    ytr = target[tasks._sklearn("diabetes").train_rows]
    np.testing.assert_allclose(p.heldout_targets.numpy(),
                               (target[tasks._sklearn("diabetes").heldout_rows] - ytr.mean()) / ytr.std(ddof=1),
                               rtol=1e-5)


def test_generated_and_text_heldout_sets_are_separate():
    shapes = tasks.get_task("shapes_cnn").problem()
    assert shapes.split["heldout"] == len(shapes.heldout_inputs) == 256
    assert not any(bool((x == shapes.inputs).flatten(1).all(1).any()) for x in shapes.heldout_inputs[:16])
    assert not set(tasks._HELDOUT_FILES) & set(tasks._CORPUS_FILES) and tasks._HELDOUT_FILES
    lm = tasks.get_task("char_gru_lm").problem()
    assert lm.has_heldout and lm.split["heldout"] == len(lm.heldout_inputs) and lm.heldout_starts.numel() == 256
    assert tasks.corpus_info()["heldout"]["files"] == list(tasks._HELDOUT_FILES)


def test_final_over_min_on_a_synthetic_curve():
    # learned: seed 0 dips to 0.2 and ends at 0.3 (1.5), seed 1 ends at its minimum (1.0).
    finals = {"learned": [0.3, 0.5], "adamw": [0.5, 0.5], "sgd_momentum": [0.5, 0.5], **_grid({}, [0.4, 0.4])}
    curves = {"learned": [[1.0, 0.2, 0.3], [1.0, 0.6, 0.5]], "sgd_momentum": [[1.0, 0.5, float("nan")]] * 2}
    finals["sgd_momentum"] = [float("nan")] * 2
    s = quality.summarize(_fake_task(finals, curves))
    c = s["columns"]["learned"]
    assert c["final_over_min_mean"] == pytest.approx(1.25) and c["final_over_min_above"] == 1
    assert s["columns"]["adam"]["final_over_min_mean"] == 1.0 and s["columns"]["adam"]["final_over_min_above"] == 0
    # a diverged run: NaN ratio, counted above the threshold
    assert math.isnan(s["columns"]["sgd_momentum"]["final_over_min_mean"])
    assert s["columns"]["sgd_momentum"]["final_over_min_above"] == 2
    # a recorded min_loss is used as is; final == min == 0 is 1
    assert quality_stats.run_minima({"min_loss": [0.1], "curve": [[9.0]]}) == [0.1]
    assert quality_stats.final_over_min(0.0, 0.0) == 1.0 and quality_stats.final_over_min(0.3, 0.25) == 1.2
    assert math.isnan(quality_stats.final_over_min(math.nan, 0.1))
    # no held-out losses in these runs: no held-out summary, no held-out totals
    opts = {k: {"label": k, "lr": None} for k in s["columns"]}
    assert not s["has_heldout"]
    assert "heldout" not in quality_stats.totals({"settings": {"optimizers": opts}, "tasks": {"t": {"summary": s}}})


def test_few_shot_is_a_benchmark_subcommand(tmp_path, capsys):
    assert main(["benchmark", "few-shot", "--episodes", "0", "--out", str(tmp_path)]) == 2
    assert "--episodes" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["benchmark", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert all(w in out for w in ("quality", "speed", "few-shot"))


def _imports(path: Path, module: str, modules: set[str]) -> set[str]:
    """The modules (of ``modules``) that ``path``, the module ``module``, imports at any level;
    ``from PACKAGE import name`` counts as importing the submodule where ``name`` is one."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            subs = {f"{base}.{a.name}" for a in node.names} & modules
            out |= subs or {base}
    return out & modules


def test_benchmarking_has_no_import_cycles():
    """No chain of imports, function-level ones included, leads from a module of the benchmarks,
    the CLI or the demo back to itself."""
    modules = {}
    for path in (ROOT / "learned_optim").rglob("*.py"):
        rel = path.relative_to(ROOT).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        modules[name] = path
    graph = {m: _imports(p, m, set(modules)) - {m} for m, p in modules.items()}
    mine = [m for m in modules if m.startswith("learned_optim.benchmarking") or m in (
        "learned_optim.cli", "learned_optim.demo")]
    for start in mine:
        stack, seen = [(start, (start,))], set()
        while stack:
            node, trail = stack.pop()
            for dep in graph[node]:
                assert dep != start, " -> ".join(trail + (dep,))
                if dep not in seen:
                    seen.add(dep)
                    stack.append((dep, trail + (dep,)))


def test_task_table_is_held_out_and_long():
    names = tasks.task_names()
    assert len(names) >= 8 and len(set(names)) == len(names)
    # Meta-training's inner horizons stop at 200 steps; one task runs 10x that.
    assert any(t.long_horizon and t.steps >= 2000 for t in tasks.TASKS)
    assert all(t.steps > 200 for t in tasks.TASKS)


def test_path_sensitivity_quick_outputs_are_well_formed(tmp_path):
    """benchmarks/path_sensitivity.py --quick: every requested path that runs here is reported for
    every task and seed, with finite losses (20 steps cannot diverge a sane optimizer)."""
    proc = _run_script("path_sensitivity", "--quick", "--tasks", "iris_deep_mlp", "wine_mlp",
                       "--paths", "portable", "eager", "--out", str(tmp_path), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = _strict_json(tmp_path / "path_sensitivity.json")
    assert res["benchmark"] == "path_sensitivity" and res["quick"] is True
    ran = res["paths"]
    assert set(ran) | set(res["skipped_paths"]) == {"portable", "eager"} and "eager" in ran
    for path in ran:
        for task in ("iris_deep_mlp", "wine_mlp"):
            run = res["runs"][path][task]
            assert run["steps"] == 20 and len(run["final"]) == len(res["seeds"]) == 2
            assert all(math.isfinite(x) and x < i for x, i in zip(run["final"], run["initial"]))
    md = (tmp_path / "path_sensitivity.md").read_text()
    assert "QUICK RUN" in md and "| iris_deep_mlp | 20 | eager |" in md
    _check_png(tmp_path / "path_sensitivity.png")


def test_selection_study_ranks_and_reads_committed_results(tmp_path):
    """benchmarks/selection_vs_benchmark.py: its Spearman matches scipy's (ties included), and the
    study runs on the committed results alone, one row per listed point with every figure its
    folders hold."""
    import importlib.util

    from scipy.stats import spearmanr

    spec = importlib.util.spec_from_file_location("svb", ROOT / "benchmarks" / "selection_vs_benchmark.py")
    svb = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(svb)
    a, b = [1.0, 3.0, 2.0, 2.0, 5.0, 0.5], [2.0, 1.0, 4.0, 4.0, 3.0, 0.1]
    assert svb.spearman(a, b) == pytest.approx(spearmanr(a, b).statistic, abs=1e-12)
    assert svb.spearman(a, a) == pytest.approx(1.0)

    proc = _run_script("selection_vs_benchmark", "--out", str(tmp_path), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = _strict_json(tmp_path / "selection-vs-benchmark.json")
    assert [p["point"] for p in res["points"]] == list(svb.POINTS)
    default = next(p for p in res["points"] if "(default)" in p["point"])
    assert default["gpt"] == pytest.approx(1.7135, abs=1e-4)
    assert default["suite_median"] == pytest.approx(1.23, abs=5e-3)
    for fig, row in res["spearman"].items():
        assert row["n"] == sum(fig in p for p in res["points"]) >= 10
        assert all(-1.0 <= r <= 1.0 for r in row["rho"].values())
    _check_png(tmp_path / "selection-vs-benchmark.png")


def test_heldout_vit_probe_scores_the_held_out_fifth():
    """benchmarks/heldout_vit_probe.py: the probe's task trains on the training split and what
    validation scores (its full batch) is the held-out split, disjoint from it."""
    import torch

    probe = _probe_module()
    task = probe._task()
    hx, hy = task.full_batch()
    assert hx is task.heldout_x and hy is task.heldout_y
    assert len(hx) + len(task.x) == 1797 and 0.15 < len(hx) / 1797 < 0.25
    train_rows = {tuple(r.flatten().tolist()) for r in task.x}
    assert sum(tuple(r.flatten().tolist()) in train_rows for r in hx) < 0.2 * len(hx)  # digits has a few duplicates
    gen = torch.Generator().manual_seed(0)
    xb, _ = task.sample_batch(gen)
    assert all(tuple(r.flatten().tolist()) in train_rows for r in xb)


def _probe_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("probe", ROOT / "benchmarks" / "heldout_vit_probe.py")
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    return probe


def test_heldout_vit_probe_regimes_match_what_they_name(tmp_path):
    """The probe's regime options: --model benchmark-size has the transformer benchmark ViT's parameter count and
    batch, --model benchmark also its std-0.02 patch embedding and head; --train-fraction keeps a prefix of the
    training split; under ``run_inner(recipe="scheduled")`` a zero-head rule (exactly Adam's step) follows AdamW
    with the same schedule, decay and clipping; bad arguments are refused naming the option."""
    import torch

    from learned_optim.benchmarking.transformer_models import ViTDigits, count_params
    from learned_optim.meta.validation import run_inner
    from learned_optim.network import CoordinatewiseLSTM

    probe = _probe_module()
    bench = count_params(ViTDigits().model())
    for model in ("benchmark-size", "benchmark"):
        task = probe._task(1.0, model)
        params = task.init_params(torch.Generator().manual_seed(0))
        assert sum(p.numel() for p in params) == bench and task.batch_size == 64
        stds = (float(params[0].std()), float(params[-2].std()))
        assert (max(stds) < 0.03) == (model == "benchmark"), (model, stds)
    full, quarter = probe._task(1.0), probe._task(0.25)
    assert len(quarter.y) == round(0.25 * len(full.y)) and torch.equal(quarter.x, full.x[: len(quarter.y)])
    assert torch.equal(quarter.heldout_x, full.heldout_x)

    net = CoordinatewiseLSTM()  # a zero head: the step is Adam's
    kw = dict(lr=1e-3, impl="auto", recipe="scheduled", clip_norm=1.0)
    learned = run_inner(quarter, 30, 5, weights=net, **kw)["final_loss"]
    adam = run_inner(quarter, 30, 5, **kw)["final_loss"]
    plain = run_inner(quarter, 30, 5, lr=1e-3)["final_loss"]
    assert abs(learned - adam) < 1e-4 * abs(adam) and abs(plain - adam) > 1e-3 * abs(adam), (learned, adam, plain)
    for bad in (["--train-fraction", "0"], ["--adam-lrs", "1e-3,x"], ["--seeds", "0"]):
        proc = _run_script("heldout_vit_probe", "--out", str(tmp_path / "x"), "--adam-only", *bad, cwd=tmp_path)
        assert proc.returncode == 2 and bad[0] in proc.stderr, proc.stderr


def test_heldout_lm_probe_scores_held_out_text(tmp_path):
    """benchmarks/heldout_lm_probe.py: the probe's LM trains on the head of the validation modules and
    scores (its full batch) windows of the held-out tail; --model deep is 4 layers at context 64; bad
    arguments are refused naming the option."""
    import importlib.util

    import torch

    from learned_optim.meta.arch_tasks import _corpus

    spec = importlib.util.spec_from_file_location("lm_probe", ROOT / "benchmarks" / "heldout_lm_probe.py")
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    for model, layers, ctx in (("validation", 2, 32), ("deep", 4, 64)):
        task = probe._task(model)
        assert (task.source, task.heldout) == ("validation:head", "validation:tail")
        assert task.model.layers == layers and task.ctx == ctx
        scored = task.full_batch()
        assert torch.equal(scored, task.validation_batch()) and scored.shape[1] == ctx + 1
        tail = bytes(_corpus("validation:tail").tolist())
        assert all(bytes(w.tolist()) in tail for w in scored[:8])
        assert task.sample_batch(torch.Generator().manual_seed(0)).shape == (task.batch_size, ctx + 1)
    # each job's losses are cached as it finishes and read back instead of rerun, for its own regime only
    cache = tmp_path / "jobs"
    cache.mkdir()
    job = ("adam 0.001", None, 1e-3, 3, 1, "validation", str(cache))
    key, losses = probe._job(job)
    assert key == "adam 0.001" and len(losses) == 1 and math.isfinite(losses[0])
    record = json.loads(probe._cache_file(cache, key).read_text())
    assert record == {"regime": [None, 1e-3, 3, 1, "validation"], "losses": losses}
    record["losses"] = [123.0]
    probe._cache_file(cache, key).write_text(json.dumps(record))
    assert probe._job(job) == (key, [123.0])
    assert probe._job(job[:3] + (4,) + job[4:])[1] != [123.0]  # another horizon: rerun
    for bad in (["--adam-lrs", "1e-3,x"], ["--seeds", "0"], ["--model", "wide"]):
        proc = _run_script("heldout_lm_probe", "--out", str(tmp_path / "x"), *bad, cwd=tmp_path)
        assert proc.returncode == 2 and bad[0] in proc.stderr, proc.stderr


def test_average_weights_is_the_mean_and_refuses_mixed_configs(tmp_path):
    """benchmarks/average_weights.py: the element-wise mean of the inputs, a committed average
    reproduced from its committed inputs, and a clear error for inputs of different configs."""
    import torch
    from safetensors.torch import load_file

    from learned_optim.hub import save_pretrained
    from learned_optim.network import WEIGHT_NAMES, CoordinatewiseLSTM

    nets = [CoordinatewiseLSTM(LSTMOptimizerConfig(hidden_size=2), seed=s) for s in (0, 1, 2)]
    for i, n in enumerate(nets):
        save_pretrained(n, tmp_path / f"w{i}")
    proc = _run_script("average_weights", str(tmp_path / "mean"), *(str(tmp_path / f"w{i}") for i in range(3)),
                       cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = load_file(str(tmp_path / "mean" / "model.safetensors"))
    for name in WEIGHT_NAMES:
        want = torch.stack([getattr(n, name).detach().double() for n in nets]).mean(0).float()
        assert torch.equal(got[name], want)

    avg = ROOT / "benchmarks" / "results" / "meta-v2" / "avg"
    inputs = [str(avg / "inputs" / "rise1" / f"step{s}") for s in (100, 200, 300, 400)]
    proc = _run_script("average_weights", str(tmp_path / "again"), *inputs, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    again = load_file(str(tmp_path / "again" / "model.safetensors"))
    committed = load_file(str(avg / "rise1-100to400" / "weights" / "model.safetensors"))
    assert all(torch.equal(again[k], committed[k]) for k in committed)

    save_pretrained(CoordinatewiseLSTM(LSTMOptimizerConfig(hidden_size=3)), tmp_path / "other")
    proc = _run_script("average_weights", str(tmp_path / "bad"), str(tmp_path / "w0"), str(tmp_path / "other"),
                       cwd=tmp_path)
    assert proc.returncode != 0 and "another rule config" in proc.stderr and not (tmp_path / "bad").exists()


def test_meta_speed_reports_both_implementations_and_their_agreement(tmp_path):
    """benchmarks/meta_speed.py on the tiny preset: both implementations timed, the estimates agree
    to rounding, the report names the command; a bad option is one clear line."""
    proc = _run_script("meta_speed", "--out", str(tmp_path / "ms"), "--config", "tiny", "--repeats", "1",
                       "--steps", "2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = _strict_json(tmp_path / "ms" / "meta-speed.json")
    assert set(res["estimate_seconds"]) == {"reference", "auto"} and res["trajectories"] == 2
    assert all(t > 0 for ts in res["estimate_seconds"].values() for t in ts) and res["speedup_estimate"] > 0
    assert len(res["inner_step_ms_per_task"]) == 2
    assert res["meta_gradient_relative_difference"] < 1e-3
    assert res["meta_loss"]["auto"] == pytest.approx(res["meta_loss"]["reference"], rel=1e-5)
    md = (tmp_path / "ms" / "meta-speed.md").read_text()
    assert "python benchmarks/meta_speed.py" in md and "| auto |" in md
    _check_png(tmp_path / "ms" / "meta-speed.png")
    (tmp_path / "ms" / "meta-speed.md").unlink()
    proc = _run_script("meta_speed", "--out", str(tmp_path / "ms"), "--rerender", cwd=tmp_path)
    assert proc.returncode == 0 and (tmp_path / "ms" / "meta-speed.md").read_text() == md
    proc = _run_script("meta_speed", "--out", str(tmp_path / "bad"), "--repeats", "0", cwd=tmp_path)
    assert proc.returncode == 2 and "--repeats must be >= 1" in proc.stderr


def _step_scale_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("step_scale", ROOT / "benchmarks" / "step_scale_by_tensor.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("scale, additive", [(1.0, 0.0), (2.0, 0.2)])
def test_step_scale_probe_reads_a_known_rule(tmp_path, scale, additive):
    """benchmarks/step_scale_by_tensor.py: on rules whose step is known in closed form (a zero LSTM
    head is Adam; a head bias alone gives Adam times exp(b tanh(y0)) plus r tanh(y1) sign(m)) the probe
    reports that multiplier, that additive term against Adam's step and a cosine of 1 for Adam, and
    probing changes no step of the run."""
    import math

    import torch

    from learned_optim import LearnedOptimizer
    from learned_optim.benchmarking import tasks
    from learned_optim.network import CoordinatewiseLSTM

    mod = _step_scale_module()
    cfg = LSTMOptimizerConfig(sign_equivariant=True, context_features=("p_log_rms", "log_fan_in", "is_vector"))
    net = CoordinatewiseLSTM(cfg, seed=3)
    with torch.no_grad():
        net.head_bias[0] = math.atanh(math.log(scale) / cfg.log_scale_bound)
        net.head_bias[1] = math.atanh(additive / cfg.direction_bound)
    spec = tasks.get_task("wine_mlp")
    problem = spec.problem()
    records: list = []
    models = [problem.model(0) for _ in range(2)]
    probed = mod.ProbedOptimizer(models[0].parameters(), every=7, names={}, records=records, weights=net)
    plain = LearnedOptimizer(models[1].parameters(), weights=net)
    index = problem.batches(0, 30, spec.batch_size)
    for s in range(30):
        for model, opt in zip(models, (probed, plain)):
            opt.zero_grad()
            problem.loss(model, index[s]).backward()
            opt.step()
    assert all(torch.equal(a, b) for a, b in zip(models[0].parameters(), models[1].parameters()))
    assert sorted({r["step"] for r in records}) == [1, 7, 14, 21, 28]
    for r in records:
        assert r["mult_scale"] == pytest.approx(scale, rel=1e-6)  # the head bias is float32
        assert r["additive"] == pytest.approx(additive / r["adam_rms"], rel=1e-6)
        if additive == 0:
            assert r["mult"] == pytest.approx(1.0, rel=1e-9) and r["cos"] == pytest.approx(1.0, abs=1e-12)
        assert set(r) >= {"p_log_rms", "log_fan_in", "is_vector", "grad_vs_ema"}


def test_step_scale_script_writes_its_report(tmp_path):
    """The script end to end on one small task: JSON, markdown with its command, and the figure."""
    proc = _run_script("step_scale_by_tensor", "--workloads", "wine_mlp", "--every", "0.25", "--out",
                       str(tmp_path / "ss"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = _strict_json(tmp_path / "ss" / "step-scale.json")
    wine = res["workloads"]["wine_mlp"]
    assert wine["steps"] == 500 and wine["summary"]["all"]["probes"] == 5
    md = (tmp_path / "ss" / "step-scale.md").read_text()
    assert "python benchmarks/step_scale_by_tensor.py" in md and "| wine_mlp | 10x |" in md
    assert len(wine["records"]) == 5 * 4 and all(set(r) >= {"mult", "additive", "cos"} for r in wine["records"])
    _check_png(tmp_path / "ss" / "step-scale.png")
    thirds = wine["summary"]["class_thirds"]
    assert set(thirds) == set(wine["summary"]["classes"])  # every class, per third of the run
    for c, by_third in thirds.items():
        probed = [r for r in wine["records"] if r["class"] == c and r["step"] <= 500 / 3]
        assert by_third["1/3"]["probes"] == len({r["step"] for r in probed})
    (tmp_path / "ss" / "step-scale.md").unlink()
    again = _run_script("step_scale_by_tensor", "--rerender", "--out", str(tmp_path / "ss"), cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert (tmp_path / "ss" / "step-scale.md").read_text() == md  # the report again from the records alone
    redone = _strict_json(tmp_path / "ss" / "step-scale.json")["workloads"]["wine_mlp"]["summary"]
    assert redone["all"] == pytest.approx(wine["summary"]["all"], rel=1e-4)  # from records kept to 5 digits
    assert redone["class_thirds"].keys() == thirds.keys()
    slim = _run_script("step_scale_by_tensor", "--workloads", "wine_mlp", "--every", "0.5", "--lr", "5e-4",
                       "--no-records", "--out", str(tmp_path / "slim"), cwd=tmp_path)
    assert slim.returncode == 0, slim.stderr[-2000:]
    res = _strict_json(tmp_path / "slim" / "step-scale.json")
    assert "records" not in res["workloads"]["wine_mlp"] and res["meta"]["lr"] == 5e-4
    assert res["meta"]["command"].endswith("--no-records") and "--lr 0.0005" in res["meta"]["command"]
    refused = _run_script("step_scale_by_tensor", "--rerender", "--out", str(tmp_path / "slim"), cwd=tmp_path)
    assert refused.returncode != 0 and "--no-records" in refused.stderr
    bad = _run_script("step_scale_by_tensor", "--workloads", "nope", "--out", str(tmp_path / "x"), cwd=tmp_path)
    assert bad.returncode != 0 and "--workloads" in bad.stderr


def test_step_scale_study_reads_committed_probes(tmp_path):
    """benchmarks/step_scale_vs_benchmark.py on the committed probes: one row per probe, the default's
    row joined with its own benchmark folder, and correlations only over points that have both figures."""
    proc = _run_script("step_scale_vs_benchmark", "--out", str(tmp_path), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = _strict_json(tmp_path / "step-scale-vs-benchmark.json")
    probes = sorted(p.name for p in (ROOT / "benchmarks" / "results" / "step-scale" / "points").iterdir())
    assert [r["point"] for r in res["rows"]] == probes
    default = next(r for r in res["rows"] if r["point"] == "t32-step400")
    assert default["gpt"] == pytest.approx(1.7135, abs=1e-4)
    assert default["suite_median"] == pytest.approx(1.23, abs=5e-3)
    assert 1 < default["c_gpt"] < 10 and default["c_long_late"] > default["c_wine"]
    for key, row in res["spearman"].items():
        mult, fig = key.split(" vs ")
        assert row["n"] == sum(mult in r and fig in r for r in res["rows"]) >= 5 and -1 <= row["rho"] <= 1
    _check_png(tmp_path / "step-scale-vs-benchmark.png")


def test_quality_labels_the_learned_column_with_the_lr_it_ran_at(tmp_path):
    """--learned-kwargs '{"lr": ...}' runs the learned column at that lr, and its header says so (not the
    default lr with the override in brackets); other keyword arguments stay in brackets."""
    out = tmp_path / "q"
    assert main([*_QUICK_WINE, "--seeds", "1", "--out", str(out),
                 "--learned-kwargs", '{"lr": 0.0005, "impl": "eager"}']) == 0
    res = _strict_json(out / "quality.json")
    assert res["settings"]["optimizers"]["learned"] == {"label": "learned (lr 0.0005) [impl=eager]", "lr": 0.0005}
    assert all(lr == 0.0005 for lr in [res["tasks"]["wine_mlp"]["runs"]["learned"]["lr"]])
    md = (out / "quality.md").read_text(encoding="utf-8")
    assert "learned (lr 0.0005) [impl=eager]" in md and "lr=0.0005" not in md and "learned (lr 1e-3)" not in md


def test_adam_heldout_lr_scores_held_out_examples_and_the_late_mean(tmp_path):
    """benchmarks/adam_heldout_lr.py: the curves evaluate every ``every`` steps on the task's
    held-out examples and its full training batch, the late mean is the mean of the second half of
    the held-out curve, the end-to-end run writes one row per task with its best lrs, and bad
    arguments are refused naming the option."""
    import importlib.util

    from learned_optim.meta.config import TRAIN_FAMILIES

    spec = importlib.util.spec_from_file_location("ahl", ROOT / "benchmarks" / "adam_heldout_lr.py")
    ahl = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ahl)
    assert ahl.summarize({"heldout": [4.0, 3.0, 2.0, 1.0], "train": [9.0, 0.5]}) == {
        "final_heldout": 1.0, "mean_heldout_late": 1.5, "final_train": 0.5}
    task = TRAIN_FAMILIES["vit-nanogpt-split"]().sample(__import__("torch").Generator().manual_seed(0))
    c = ahl.curves(task, 6, 3, 1e-3, 2)
    assert len(c["heldout"]) == len(c["train"]) == 3
    assert c["heldout"] != c["train"]  # different examples
    assert ahl.curves(task, 6, 3, 1e-3, 2) == c  # one seed, one run
    assert ahl.main(["--out", str(tmp_path), "--tasks", "1", "--horizon", "4", "--every", "2",
                     "--lrs", "1e-3,1e-2"]) == 0
    res = _strict_json(tmp_path / "adam-heldout-lr.json")
    (row,) = res["rows"]
    assert set(row["by_lr"]) == {"0.001", "0.01"} and row["best_final_heldout"] in (1e-3, 1e-2)
    assert "nanogpt" in row["task"] and (tmp_path / "adam-heldout-lr.md").read_text().count("\n| vit") == 1
    for bad in (["--family", "nope"], ["--horizon", "10", "--every", "6"]):
        proc = _run_script("adam_heldout_lr", "--out", str(tmp_path / "x"), *bad, cwd=tmp_path)
        assert proc.returncode == 2 and bad[0] in proc.stderr, proc.stderr


def test_recipe_spread_pools_run_to_run_spread_and_reads_committed_results(tmp_path):
    """benchmarks/recipe_spread.py: the pooled within-recipe sd and the runs needed match a hand
    computation; the study runs on the committed results alone, every listed run read, and the
    default's figures are its committed ones."""
    import importlib.util
    import statistics

    spec = importlib.util.spec_from_file_location("rs", ROOT / "benchmarks" / "recipe_spread.py")
    rs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rs)
    runs = {"a": [dict(gpt=1.70, vit=96.0, suite_median=1.0, suite_wins=5), dict(gpt=1.72, vit=97.0,
                                                                               suite_median=2.0, suite_wins=4)],
            "b": [dict(gpt=1.71, vit=95.0, suite_median=1.5, suite_wins=5), dict(gpt=1.71, vit=95.0,
                                                                               suite_median=1.5, suite_wins=5),
                  dict(gpt=1.74, vit=96.0, suite_median=1.5, suite_wins=2)]}
    out = rs.spread(runs)
    # pooled: sum of squared deviations from each recipe's mean over (2 - 1) + (3 - 1) degrees of freedom
    ss = (0.01 ** 2 * 2) + sum((x - 1.72) ** 2 for x in (1.71, 1.71, 1.74))
    assert out["pooled_sd"]["gpt"] == pytest.approx(math.sqrt(ss / 3))
    assert out["recipes"]["b"]["vit"]["sd"] == pytest.approx(statistics.stdev([95.0, 95.0, 96.0]))
    assert out["runs_needed"]["gpt"] == math.ceil(2 * (2 * math.sqrt(ss / 3) / rs.GAPS["gpt"]) ** 2)

    # run x seed decomposition: runs that differ by a constant have no interaction, and their whole
    # spread is the run component; rows that are permutations of one another have no run effect
    base = [1.0, 2.0, 4.0]

    def run(vals):
        return {"seeds": [0, 1, 2], "gpt_by_seed": vals}

    shifted = rs.components({"r": [run([v + d for v in base]) for d in (0.0, 0.3, 0.9)]}, "gpt_by_seed")
    assert shifted["interaction_sd"] == pytest.approx(0.0, abs=1e-12)
    assert shifted["run_component_sd"] == pytest.approx(shifted["between_runs_sd"])
    assert shifted["between_runs_sd"] == pytest.approx(statistics.stdev([0.0, 0.3, 0.9]))
    mixed = rs.components({"r": [run(base), run([2.0, 4.0, 1.0]), run([4.0, 1.0, 2.0])]}, "gpt_by_seed")
    assert mixed["between_runs_sd"] == pytest.approx(0.0, abs=1e-12) and mixed["run_component_sd"] == 0.0
    assert mixed["interaction_sd"] > 0
    with pytest.raises(ValueError, match="same benchmark seeds"):
        rs.components({"r": [run(base), {"seeds": [0, 1, 3], "gpt_by_seed": base}]}, "gpt_by_seed")

    proc = _run_script("recipe_spread", "--out", str(tmp_path), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = _strict_json(tmp_path / "recipe-spread.json")
    assert {k: [r["run"] for r in v] for k, v in res["runs"].items()} == rs.RECIPES
    assert res["default"]["gpt"] == pytest.approx(1.7083, abs=1e-4)
    assert res["default"]["vit"] == pytest.approx(96.27, abs=5e-3)
    assert res["default"]["suite_median"] == pytest.approx(1.14, abs=5e-3)
    assert res["default"]["suite_wins"] == 5
    for fig in ("gpt", "vit"):  # the decomposition's between-run sd is the pooled sd of the run means
        assert res["components"][fig]["between_runs_sd"] == pytest.approx(res["spread"]["pooled_sd"][fig])
    _check_png(tmp_path / "recipe-spread.png")


def test_lr_by_tensor_class_splits_groups_without_changing_adamw(tmp_path):
    """benchmarks/lr_by_tensor_class.py: every parameter of both benchmark transformers lands in
    exactly one group with its class's lr and the benchmark's weight decay; the "all at base lr"
    configuration is AdamW at that lr bit for bit (splitting the groups changes no step), a class
    at another lr changes the run, and bad arguments are refused naming the option."""
    import importlib.util

    import torch

    from learned_optim.benchmarking.transformer import evaluation_steps, train_once
    from learned_optim.benchmarking.transformer_models import WORKLOADS, param_groups

    spec = importlib.util.spec_from_file_location("lrc", ROOT / "benchmarks" / "lr_by_tensor_class.py")
    lrc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(lrc)
    vit, gpt = WORKLOADS["vit-digits"]().model(), WORKLOADS["gpt-byte"]().model()
    classes = {n: lrc.tensor_class(n, p) for n, p in vit.named_parameters()}
    assert classes["cls"] == classes["pos"] == classes["patch.weight"] == "embed"
    assert classes["blocks.0.attn.qkv.weight"] == classes["blocks.0.attn.proj.weight"] == "attn"
    assert classes["blocks.0.fc.weight"] == classes["blocks.0.proj.weight"] == "mlp"
    assert classes["head.weight"] == "head" and classes["blocks.0.ln1.weight"] == classes["head.bias"] == "vectors"
    assert {lrc.tensor_class(n, p) for n, p in gpt.named_parameters()} == {"embed", "attn", "mlp", "vectors"}
    for model in (vit, gpt):
        groups = lrc.param_groups_by_class(param_groups(model, 0.1), 1e-3, {"mlp": 5e-4})
        names = {id(p): n for n, p in model.named_parameters()}
        seen = [names[id(p)] for g in groups for p in g["params"]]
        assert sorted(seen) == sorted(names.values())  # each parameter once
        for g in groups:
            for p in g["params"]:
                assert g["weight_decay"] == (0.1 if p.dim() >= 2 else 0.0)
                assert g["lr"] == (5e-4 if lrc.tensor_class(names[id(p)], p) == "mlp" else 1e-3)
    assert [c for c, _ in lrc.configs(3e-3, 3e-4, ["head"])] == ["all at 0.003", "head at 0.0003", "all at 0.0003"]

    assert lrc.main(["--workload", "vit-digits", "--base-lr", "3e-3", "--class-lr", "3e-4", "--classes", "attn",
                     "--seeds", "1", "--steps", "3", "--out", str(tmp_path)]) == 0
    res = _strict_json(tmp_path / "lr-by-class.json")
    finals = {c["label"]: c["runs"][0]["final"] for c in res["configs"]}
    wl = WORKLOADS["vit-digits"]()
    plain = {lr: train_once(wl, lambda g, lr=lr: torch.optim.AdamW(g, lr=lr), 0, 3, evaluation_steps(3))["final"]
             for lr in (3e-3, 3e-4)}
    assert finals["all at 0.003"] == plain[3e-3] and finals["all at 0.0003"] == plain[3e-4]
    assert finals["attn at 0.0003"] not in (plain[3e-3], plain[3e-4])
    assert (tmp_path / "lr-by-class.md").read_text().count("\n| attn at 0.0003 |") == 1
    _check_png(tmp_path / "lr-by-class.png")
    (tmp_path / "lr-by-class.md").unlink()
    assert lrc.main(["--rerender", "--out", str(tmp_path)]) == 0  # the report again from the JSON alone
    assert (tmp_path / "lr-by-class.md").read_text().count("\n| attn at 0.0003 |") == 1
    for bad in (["--classes", "nope"], ["--base-lr", "-1"], ["--seeds", "0"], ["--rerender", "--out", "nowhere"]):
        args = ["--base-lr", "1e-3", "--class-lr", "1e-3", "--out", str(tmp_path / "x"), *bad]
        if bad[0] == "--base-lr":
            args = ["--class-lr", "1e-3", "--out", str(tmp_path / "x"), *bad]
        proc = _run_script("lr_by_tensor_class", *args, cwd=tmp_path)
        assert proc.returncode == 2 and bad[0] in proc.stderr, proc.stderr


def test_grad_ratio_probe_scales_each_tensor_step_by_its_gradient_ratio(tmp_path):
    """benchmarks/grad_ratio_probe.py: the ratio matches a hand computation; exponent 0 is the rule
    with per-tensor groups bit for bit; exponent s takes, at every step, exactly the step of the rule
    run with each tensor's lr times clip(r, 0.01, 3)^s (1 at the first step); the script writes its
    report, and bad arguments are refused naming the option."""
    import copy
    import importlib.util

    import torch

    from learned_optim import LearnedOptimizer
    from learned_optim.benchmarking.transformer_models import ViT, param_groups

    spec = importlib.util.spec_from_file_location("grp", ROOT / "benchmarks" / "grad_ratio_probe.py")
    grp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(grp)
    g, v = torch.tensor([3.0, 4.0]), torch.tensor([0.5, 2.0])
    want = (25.0 / 2) ** 0.5 / ((0.5 / (1 - 0.9 ** 2) + 2.0 / (1 - 0.9 ** 2)) / 2) ** 0.5
    assert grp.grad_ratio(g, v, 2.0, 0.9) == pytest.approx(want, rel=1e-6)

    torch.manual_seed(0)
    base = ViT(d_model=16, n_layers=1, n_heads=2, mlp_ratio=2)
    x, y = torch.rand(8, 64), torch.randint(0, 10, (8,))
    models = [copy.deepcopy(base) for _ in range(3)]
    scaled = grp.GradRatioScaled(param_groups(models[0], 0.1), exponent=1.5, lr=1e-3)  # split per tensor
    zero = grp.GradRatioScaled(models[1].parameters(), exponent=0.0, lr=1e-3, weight_decay=0.1)
    assert len(zero.param_groups) == len(list(base.parameters())) == len(scaled.param_groups)
    assert [g["weight_decay"] for g in zero.param_groups] == [0.1] * len(zero.param_groups)
    zero = grp.GradRatioScaled(param_groups(models[1], 0.1), exponent=0.0, lr=1e-3)
    plain = LearnedOptimizer(grp.per_tensor_groups(param_groups(models[2], 0.1)), lr=1e-3)
    twin, twin_opt = copy.deepcopy(base), None
    for step in range(4):
        for m, o in zip(models, (scaled, zero, plain)):
            o.zero_grad()
            torch.nn.functional.cross_entropy(m(x), y).backward()
        if twin_opt is None:  # a plain rule on the scaled run's parameters, its lrs set by hand below
            twin.load_state_dict(models[0].state_dict())
            twin_opt = LearnedOptimizer(grp.per_tensor_groups(param_groups(twin, 0.1)), lr=1e-3)
        twin_opt.zero_grad()
        torch.nn.functional.cross_entropy(twin(x), y).backward()
        factors = []
        for group in twin_opt.param_groups:
            (p,) = group["params"]
            st = twin_opt.state.get(p, {})
            r = grp.grad_ratio(p.grad, st["exp_avg_sq"], float(st["step"]), 0.999) if st else None
            factors.append(1.0 if r is None else min(max(r, 0.01), 3.0) ** 1.5)
            group["lr"] = 1e-3 * factors[-1]
        for o in (scaled, zero, plain):
            o.step()
        twin_opt.step()
        assert scaled.factors == pytest.approx(factors, rel=1e-12)
        assert (step == 0) == all(f == 1.0 for f in scaled.factors)
        assert all(torch.equal(a, b) for a, b in zip(models[0].parameters(), twin.parameters()))
        assert all(torch.equal(a, b) for a, b in zip(models[1].parameters(), models[2].parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(models[0].parameters(), models[2].parameters()))
    assert [g["lr"] for g in scaled.param_groups] == [1e-3] * len(scaled.param_groups)  # restored after each step

    assert grp.main(["--workload", "vit-digits", "--exponents", "0,1", "--seeds", "1", "--steps", "3",
                     "--out", str(tmp_path)]) == 0
    res = _strict_json(tmp_path / "grad-ratio.json")
    assert [c["exponent"] for c in res["configs"]] == [0.0, 1.0] and len(res["configs"][1]["runs"]) == 1
    assert (tmp_path / "grad-ratio.md").read_text().count("\n| 1 |") == 1
    if importlib.util.find_spec("transformers") is not None:  # the Trainer run, through optimizer_cls_and_kwargs
        assert grp.main(["--workload", "hf-gpt2", "--exponents", "1", "--seeds", "1", "--steps", "2",
                         "--out", str(tmp_path / "hf")]) == 0
        (run,) = _strict_json(tmp_path / "hf" / "grad-ratio.json")["configs"][0]["runs"]
        assert 0 < run["final"] < 10
    for bad in (["--exponents", "a"], ["--exponents", "-1"], ["--seeds", "0"], ["--steps", "0"]):
        proc = _run_script("grad_ratio_probe", "--out", str(tmp_path / "x"), *bad, cwd=tmp_path)
        assert proc.returncode != 0 and bad[0] in proc.stderr, proc.stderr


def test_memoryless_weights_cut_the_head_off_the_lstm_state(tmp_path):
    """benchmarks/memoryless_weights.py: with --rows 0,1 the step no longer depends on the LSTM
    state (scrambling lstm_h/lstm_c before every step leaves every parameter bit-identical), with
    --rows 0 it still does (row 1 reads h); --drop-rows zeroes a row's bias too; the provenance
    records both; bad rows are refused naming the option."""
    import importlib.util

    import pytest
    import torch

    from learned_optim import LearnedOptimizer, from_pretrained

    spec = importlib.util.spec_from_file_location("mw", ROOT / "benchmarks" / "memoryless_weights.py")
    mw = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mw)

    def run(weights, scramble):
        torch.manual_seed(0)
        ps = [torch.nn.Parameter(torch.randn(6, 5)), torch.nn.Parameter(torch.randn(5))]
        opt = LearnedOptimizer(ps, weights=weights, impl="reference")
        gen, noise = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)
        for _ in range(4):
            for p in ps:
                p.grad = torch.randn(p.shape, generator=gen)
                if scramble and opt.state[p]:
                    opt.state[p]["lstm_h"].uniform_(-1, 1, generator=noise)
                    opt.state[p]["lstm_c"].normal_(generator=noise)
            opt.step()
        return [p.detach().clone() for p in ps]

    src = from_pretrained("lstm-h4-v2-vec")
    h = src.config.hidden_size
    for rows, drop, memoryless in (("0,1", None, True), ("0", None, False), ("0", "1", True)):
        out = tmp_path / f"{rows}-{drop}"
        assert mw.main(["lstm-h4-v2-vec", "--rows", rows, "--out", str(out)]
                       + (["--drop-rows", drop] if drop else [])) == 0
        net = from_pretrained(str(out))
        zeroed = [int(r) for r in rows.split(",")]
        for r in range(2):
            dropped = drop is not None and r == int(drop)
            assert torch.equal(net.head_weight[r, :h] == 0, torch.full((h,), r in zeroed or dropped))
        assert torch.equal(net.head_weight[0, h:], src.head_weight[0, h:])
        assert net.provenance["hidden_head_columns_zeroed"] == {"source": "lstm-h4-v2-vec", "rows": zeroed}
        if drop:
            assert net.head_bias[1] == 0 and not net.head_weight[1].any() and net.provenance["head_rows_zeroed"] == [1]
        same = all(torch.equal(a, b) for a, b in zip(run(net, False), run(net, True)))
        assert same is memoryless, (rows, drop)
    for bad in (["--rows", "2"], ["--rows", "x"], ["--rows", "0", "--drop-rows", "3"]):
        with pytest.raises(SystemExit, match="--rows|--drop-rows"):
            mw.main(["lstm-h4-v2-vec", *bad, "--out", str(tmp_path / "bad")])


def test_gpu_scripts_without_cuda_and_the_committed_gpu_report(tmp_path):
    """gpu_check.py and gpu_step_profile.py exit 0 without CUDA (gpu_check after its CPU smoke
    run of the eager path against the reference), and gpu_report.py rebuilds the committed
    report.md of benchmarks/results/gpu-h200 from its JSON files exactly."""
    for script in ("gpu_check.py", "gpu_step_profile.py"):
        res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script)], capture_output=True, text=True,
                             timeout=300, env={**_ENV, "CUDA_VISIBLE_DEVICES": ""})
        assert res.returncode == 0, res.stderr[-2000:]
        assert "no CUDA device here" in res.stdout
        if script == "gpu_check.py":
            assert "CPU smoke: eager path vs reference" in res.stdout
    results = ROOT / "benchmarks" / "results" / "gpu-h200"
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_report.py"),
                          *sorted(str(p) for p in results.glob("run*.json")), "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=300, env=_ENV)
    assert res.returncode == 0, res.stderr[-2000:]
    assert (tmp_path / "report.md").read_text() == (results / "report.md").read_text()
    assert (tmp_path / "report.png").stat().st_size > 10_000


def _fake_transformer(path: Path, name: str, steps: int, runs: dict, weights: str, cpu: str = "CPU A") -> None:
    """A minimal complete transformer.json with ``runs`` {(optimizer, lr): values over seeds 0-4}."""
    metric = "test_acc" if name == "vit-digits" else "final"
    wl = {"steps": steps, "runs": {f"{opt}_lr={lr}": {"optimizer": opt, "lr": lr, "seeds": [0, 1, 2, 3, 4],
                                                      metric: vals, "diverged": [False] * 5,
                                                      **({"final": [0.0] * 5} if metric == "test_acc" else {})}
                                   for (opt, lr), vals in runs.items()}}
    path.mkdir(parents=True, exist_ok=True)
    (path / "transformer.json").write_text(json.dumps({
        "benchmark": "transformer", "complete": True, "settings": {"quick": False}, "machine": {"cpu": cpu},
        "weights": {"name": weights, "provenance": {"w": weights}}, "workloads": {name: wl}}))


def test_candidate_frontier_pairs_workloads_by_weights_and_finds_the_front(tmp_path):
    """benchmarks/candidate_frontier.py: one row per weights with both workloads (a weights with one workload
    only, a short run and a quick run are left out), means over seeds 0-4, the front and the targets."""
    res_root = tmp_path / "results"
    adamw_gpt, adamw_vit = {("adamw", 0.003): [1.70] * 5}, {("adamw", 0.0003): [0.975] * 5}
    _fake_transformer(res_root / "ten-seeds" / "default-gpt-byte", "gpt-byte", 3000,
                      {**adamw_gpt, ("learned", 0.001): [1.71] * 5}, "dflt")
    _fake_transformer(res_root / "ten-seeds" / "default-vit-digits", "vit-digits", 1000,
                      {**adamw_vit, ("learned", 0.001): [0.96] * 5}, "dflt")
    # "good": better than tuned AdamW on the GPT and within a point on the ViT; "worse": behind "good" on both
    _fake_transformer(res_root / "good" / "gpt", "gpt-byte", 3000, {("learned", 0.001): [1.69, 1.69, 1.7, 1.68, 1.69]},
                      "good")
    _fake_transformer(res_root / "good" / "vit", "vit-digits", 1000, {("learned", 0.001): [0.97] * 5}, "good")
    _fake_transformer(res_root / "worse" / "gpt", "gpt-byte", 3000, {("learned", 0.001): [1.75] * 5}, "worse")
    _fake_transformer(res_root / "worse" / "vit", "vit-digits", 1000, {("learned", 0.001): [0.95] * 5}, "worse")
    _fake_transformer(res_root / "gpt-only", "gpt-byte", 3000, {("learned", 0.001): [1.6] * 5}, "gpt-only")
    _fake_transformer(res_root / "short" / "gpt", "gpt-byte", 300, {("learned", 0.001): [1.6] * 5}, "short")
    _fake_transformer(res_root / "short" / "vit", "vit-digits", 1000, {("learned", 0.001): [0.99] * 5}, "short")
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "candidate_frontier.py"), "--results",
                          str(res_root), "--out", str(out), "--default", "dflt"],
                         capture_output=True, text=True, timeout=300, env=_ENV)
    assert res.returncode == 0, res.stderr[-2000:]
    d = json.loads((out / "frontier.json").read_text())
    got = {c["weights"]: c for c in d["candidates"]}
    assert sorted(got) == ["dflt", "good", "worse"]
    assert math.isclose(got["good"]["gpt"], 1.69) and math.isclose(got["good"]["vit"], 97.0)
    assert got["dflt"]["is_default"] and not got["good"]["is_default"]
    assert [c["weights"] for c in d["candidates"] if c["pareto"]] == ["good"]
    assert d["tuned_adamw_seeds_0_4"] == {"gpt": 1.70, "vit": 97.5} and d["meeting_both_targets"] == 1
    assert "| good | 1.6900 ± 0.0032 | 97.00% ± 0.00 |" in (out / "frontier.md").read_text()
    assert (out / "frontier.png").stat().st_size > 10_000


def test_cautious_probe_masks_the_step_and_matches_the_rules_mask(tmp_path):
    """benchmarks/cautious_probe.py: the wrapper keeps AdamW's step where it agrees with -g (scaled
    per tensor by numel / (kept + 1)) and leaves the decay alone; its sign(m) test with scale 1 on
    LearnedOptimizer gives the steps of the rule's own mask (cautious_scale=1) to rounding; and one
    short run writes a JSON line."""
    import importlib.util

    import torch

    from learned_optim import LearnedOptimizer, from_pretrained

    spec = importlib.util.spec_from_file_location("cautious_probe", ROOT / "benchmarks" / "cautious_probe.py")
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0, 3.0, 0.5]))
    inner = torch.optim.AdamW([p], lr=0.1, weight_decay=0.1)
    opt = probe.Cautious(inner)
    p.grad = torch.tensor([1.0, -1.0, 2.0, 0.0])
    opt.step()  # AdamW's first step is -lr sign(g): every coordinate with g != 0 agrees
    decayed = torch.tensor([1.0, -2.0, 3.0, 0.5]) * (1 - 0.1 * 0.1)
    want = decayed - 0.1 * torch.tensor([1.0, -1.0, 1.0, 0.0]) * (4 / (3 + 1))
    torch.testing.assert_close(p.detach(), want)

    net = from_pretrained("lstm-h4-v2-vec")
    gen = torch.Generator().manual_seed(0)
    a = torch.nn.Parameter(torch.randn(6, 5, generator=gen))
    b = torch.nn.Parameter(a.detach().clone())
    wrapped = probe.Cautious(LearnedOptimizer([a], weights=net, weight_decay=0.1), by_m=True, scale=1.0)
    rule = LearnedOptimizer([b], weights=net.with_cautious_mask(1.0), weight_decay=0.1)
    for _ in range(5):
        g = torch.randn(6, 5, generator=gen)
        a.grad, b.grad = g.clone(), g.clone()
        wrapped.step()
        rule.step()
    torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-6, atol=1e-7)
    assert not torch.equal(b.detach(), torch.randn(6, 5, generator=torch.Generator().manual_seed(0)))

    out = tmp_path / "probe.jsonl"
    probe.main(["--workload", "vit-digits", "--method", "learned-cm1", "--lr", "1e-3", "--seeds", "0", "--steps", "4",
                "--out", str(out)])
    rec = json.loads(out.read_text().splitlines()[0])
    assert rec["method"] == "learned-cm1" and rec["steps"] == 4 and math.isfinite(rec["final"])
    with pytest.raises(SystemExit, match="method"):
        probe.make_optimizer("adamw-cm1", 1e-3)
    # the quality mode: the learned column built by the method (a quick run, numbers meaningless)
    from learned_optim.benchmarking import common

    made = []
    original = probe.make_optimizer

    def spy(method, lr, weights="lstm-h4-v2-vec"):
        made.append(method)
        return original(method, lr, weights)

    saved_make = common.LearnedSetup.make
    probe.make_optimizer = spy
    try:
        assert probe.quality(["learned-cm1", "--quick", "--no-progress", "--weights", "lstm-h4-v2-vec",
                              "--out", str(tmp_path / "q")]) == 0
    finally:
        common.LearnedSetup.make = saved_make
    assert (tmp_path / "q" / "quality.json").is_file() and made.count("learned-cm1") > 1
    with pytest.raises(SystemExit, match="learned"):
        probe.quality(["adamw-cautious"])


def test_paired_seeds_pairs_runs_gathered_from_json_lines_and_a_transformer_result(tmp_path):
    import importlib.util
    spec = importlib.util.spec_from_file_location("paired_seeds", ROOT / "benchmarks" / "paired_seeds.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    tr = tmp_path / "transformer.json"
    tr.write_text(json.dumps({"workloads": {"gpt-byte": {"runs": {
        "learned_lr=0.001": {"seeds": [0, 1], "final": [1.0, 2.0]},
        "adamw_lr=0.003": {"seeds": [0, 1], "final": [1.5, 2.5]}}}}}))
    lines = tmp_path / "more.jsonl"
    lines.write_text("\n".join(json.dumps(r) for r in (
        {"workload": "gpt-byte", "method": "learned", "seed": 2, "final": 3.0},
        {"workload": "gpt-byte", "method": "adamw", "seed": 2, "final": 2.0},
        {"workload": "gpt-byte", "method": "adamw", "seed": 3, "final": 9.0},  # no learned run: not paired
        {"workload": "vit-digits", "method": "learned", "seed": 3, "final": 0.1})) + "\n")
    mod.main(["--workload", "gpt-byte", "--out", str(tmp_path / "out"),
              "--reference", f"{tr}@adamw_lr=0.003", "--reference", f"{lines}@adamw",
              "--candidate", f"{tr}@learned_lr=0.001", "--candidate", f"{lines}@learned"])
    res = json.loads((tmp_path / "out" / "paired.json").read_text())
    assert res["seeds"] == [0, 1, 2]
    assert res["reference"] == [1.5, 2.5, 2.0] and res["candidate"] == [1.0, 2.0, 3.0]
    assert res["paired"]["lower"] == 2 and res["paired"]["higher"] == 1
    assert abs(res["paired"]["mean"] - (-0.5 - 0.5 + 1.0) / 3) < 1e-12
    assert "lower on 2 of 3 seeds" in (tmp_path / "out" / "paired.md").read_text()
    # the same seed with two different losses is two different runs: an error, not a silent choice
    clash = tmp_path / "clash.jsonl"
    clash.write_text(json.dumps({"workload": "gpt-byte", "method": "adamw", "seed": 0, "final": 1.6}) + "\n")
    with pytest.raises(ValueError, match="seed 0 has two different final losses"):
        mod.main(["--workload", "gpt-byte", "--out", str(tmp_path / "o2"), "--reference", f"{tr}@adamw_lr=0.003",
                  "--reference", f"{clash}@adamw", "--candidate", f"{tr}@learned_lr=0.001"])
    with pytest.raises(ValueError, match="no run 'sgd'"):
        mod.main(["--workload", "gpt-byte", "--out", str(tmp_path / "o3"), "--reference", f"{tr}@sgd",
                  "--candidate", f"{tr}@learned_lr=0.001"])
