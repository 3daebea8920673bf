"""Tests of ``learned-optim benchmark compare``: the paired sign-flip test against hand-counted
p-values, the pairing of two quality or transformer results (common seeds, divergences, the
verdicts), its errors, and the command writing its three files.

Run: ``python -m pytest tests/test_benchmark_compare.py`` (a few seconds; no training).
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # a checkout that is not pip-installed

from learned_optim.benchmarking import compare, paired  # noqa: E402
from learned_optim.cli import main  # noqa: E402


def _quality(finals, heldout=None, seeds=None, steps=100, cpu="cpu A", weights="ref"):
    seeds = list(range(len(finals))) if seeds is None else seeds
    run = {"final": list(finals)}
    if heldout is not None:
        run["heldout_final"] = list(heldout)
    return {"benchmark": "quality", "weights": {"name": weights}, "command": "cmd", "machine": {"cpu": cpu},
            "settings": {"seeds": seeds}, "tasks": {"task_a": {"steps": steps, "runs": {"learned": run}}}}


def _transformer(finals, acc=None, seeds=None, steps=300, weights="ref"):
    seeds = list(range(len(finals))) if seeds is None else seeds
    run = {"optimizer": "learned", "lr": 1e-3, "seeds": seeds, "final": list(finals)}
    adamw = {"optimizer": "adamw", "lr": 3e-3, "seeds": seeds, "final": [9.0] * len(seeds)}
    if acc is not None:
        run["test_acc"] = list(acc)
    return {"benchmark": "transformer", "weights": {"name": weights}, "machine": {},
            "workloads": {"gpt-byte": {"steps": steps, "runs": {"learned_lr=0.001": run, "adamw_lr=0.003": adamw}}}}


# --- the test itself ------------------------------------------------------------------------------

def test_sign_flip_p_values_match_hand_counts():
    # All n differences on one side: only the observed pattern and its mirror reach |sum|: 2 / 2^n.
    assert paired.paired_test([-0.1, -0.2, -0.15, -0.12, -0.3])["p"] == pytest.approx(2 / 32)
    assert paired.paired_test([-1.0] * 10)["p"] == pytest.approx(2 / 1024)
    # d = (1, 2, 3): the sign patterns' |sums| are 6, 4, 2, 0, 0, 2, 4, 6; two reach 6.
    assert paired.paired_test([1.0, 2.0, 3.0])["p"] == pytest.approx(2 / 8)
    # d = (3, -1): |sums| 2, 4, 4, 2: all four reach 2.
    assert paired.paired_test([3.0, -1.0])["p"] == pytest.approx(1.0)
    # One large difference against small ones of the other sign: the mean is dominated by it and
    # no pattern has a smaller |sum| than the observed one.
    assert paired.paired_test([1.0, -0.01, -0.01, -0.01, -0.01])["p"] == pytest.approx(1.0)


def test_paired_test_mean_se_counts():
    d = [-0.3, 0.1, -0.2, 0.0, -0.4]
    t = paired.paired_test(d)
    assert t["n"] == 5 and (t["lower"], t["higher"], t["equal"]) == (3, 1, 1)
    assert t["mean"] == pytest.approx(statistics.mean(d))
    assert t["se"] == pytest.approx(statistics.stdev(d) / math.sqrt(5))
    one = paired.paired_test([0.5])
    assert math.isnan(one["se"]) and one["p"] == 1.0
    assert paired.paired_test([])["p"] == 1.0 and paired.paired_test([0.0, 0.0])["p"] == 1.0


def test_sampled_p_value_above_the_exact_limit():
    n = paired.EXACT_MAX_SEEDS + 4
    p = paired.paired_test([-1.0] * n)["p"]
    assert 0 < p < 1e-3  # the exact value is 2 / 2^20; sampling cannot return 0
    balanced = paired.paired_test([(-1.0) ** i * (1 + 0.01 * i) for i in range(n)])["p"]
    assert balanced > 0.5


def test_paired_test_refuses_non_finite():
    with pytest.raises(ValueError, match="diffs must be finite"):
        paired.paired_test([0.1, math.nan])


# --- pairing two results --------------------------------------------------------------------------

def test_quality_candidate_lower_on_every_seed_is_called():
    ref = [1.0 + 0.1 * i for i in range(10)]
    comp = compare.compare_results(_quality(ref, heldout=ref), _quality([0.9 * x for x in ref],
                                                                        heldout=[1.1 * x for x in ref]))
    row = comp["rows"][0]
    assert row["final"]["mean"] == pytest.approx(math.log(0.9))
    assert row["final"]["verdict"] == "candidate" and row["final"]["p"] == pytest.approx(2 / 1024)
    assert row["heldout"]["verdict"] == "reference"
    assert comp["counts"]["final"] == {"candidate": 1, "within noise": 0, "reference": 0}


def test_five_seeds_never_call_a_difference():
    ref = [1.0, 2.0, 3.0, 4.0, 5.0]
    comp = compare.compare_results(_quality(ref), _quality([0.5 * x for x in ref]))
    assert comp["rows"][0]["final"]["p"] == pytest.approx(0.0625)
    assert comp["rows"][0]["final"]["verdict"] == "within noise"


def test_only_common_seeds_are_paired():
    ref = _quality([1.0, 2.0, 3.0, 4.0], seeds=[0, 1, 2, 3])
    cand = _quality([1.5, 0.5], seeds=[3, 1])  # seed 3 -> 1.5 (ref 4.0), seed 1 -> 0.5 (ref 2.0)
    row = compare.compare_results(ref, cand)["rows"][0]
    assert row["seeds"] == [1, 3]
    assert row["final"]["mean"] == pytest.approx(statistics.mean([math.log(0.5 / 2.0), math.log(1.5 / 4.0)]))


def test_a_divergence_loses_its_pair():
    ref = [1.0] * 10
    cand = [0.5] * 9 + [math.nan]
    row = compare.compare_results(_quality(ref), _quality(cand))["rows"][0]
    assert row["final"]["candidate_only_diverged"] == 1 and row["final"]["n"] == 9
    assert row["final"]["verdict"] == "reference"
    both = compare.compare_results(_quality([math.nan] + ref[1:]), _quality(cand[:9] + [1.0]))["rows"][0]
    assert both["final"]["reference_only_diverged"] == 1 and both["final"]["candidate_only_diverged"] == 0
    assert both["final"]["verdict"] == "candidate"


def test_zero_loss_pairs_are_counted_apart():
    row = compare.compare_results(_quality([1.0, 2.0, 3.0]), _quality([0.0, 2.0, 3.0]))["rows"][0]
    assert row["final"]["infinite_ratio"] == 1 and row["final"]["n"] == 2


def test_transformer_loss_and_accuracy():
    ref = _transformer([1.70 + 0.01 * i for i in range(10)], acc=[0.96] * 10)
    cand = _transformer([1.69 + 0.01 * i for i in range(10)], acc=[0.965] * 9 + [0.95])
    comp = compare.compare_results(ref, cand)
    assert len(comp["rows"]) == 1  # AdamW runs are not compared
    row = comp["rows"][0]
    assert row["name"] == "gpt-byte, lr 0.001"
    assert row["final"]["mean"] == pytest.approx(-0.01) and row["final"]["verdict"] == "candidate"
    assert row["test_acc"]["mean"] == pytest.approx((9 * 0.5 - 1.0) / 10)
    assert row["test_acc"]["lower"] == 1 and row["test_acc"]["higher"] == 9
    md = compare.compare_markdown(comp)
    assert "| gpt-byte, lr 0.001 | 10 |" in md and "test accuracy" in md
    # A workload without accuracies (the GPT records None) gets no accuracy test.
    no_acc = compare.compare_results(_transformer([1.7, 1.8], acc=[None, None]), _transformer([1.6, 1.7],
                                                                                        acc=[None, None]))
    assert "test_acc" not in no_acc["rows"][0] and "test_acc" not in no_acc["counts"]


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="same benchmark"):
        compare.compare_results(_quality([1.0]), _transformer([1.0]))
    with pytest.raises(ValueError, match="ran 100 steps in the reference and 5"):
        compare.compare_results(_quality([1.0]), _quality([1.0], steps=5))
    with pytest.raises(ValueError, match="reference is not a quality.json or transformer.json"):
        compare.compare_results({"benchmark": "speed"}, _quality([1.0]))
    broken = _quality([1.0])
    del broken["tasks"]["task_a"]["runs"]["learned"]
    with pytest.raises(ValueError, match="not a well-formed quality.json"):
        compare.compare_results(_quality([1.0]), broken)
    other = _quality([1.0])
    other["tasks"] = {"task_b": other["tasks"]["task_a"]}
    with pytest.raises(ValueError, match="share no task"):
        compare.compare_results(_quality([1.0]), other)


def test_markdown_flags_different_cpus():
    md = compare.compare_markdown(compare.compare_results(_quality([1.0, 2.0]), _quality([1.0, 2.0], cpu="cpu B")))
    assert "different CPUs" in md
    md = compare.compare_markdown(compare.compare_results(_quality([1.0, 2.0]), _quality([1.0, 2.0])))
    assert "different CPUs" not in md


# --- the command ----------------------------------------------------------------------------------

def test_command_writes_three_files(tmp_path, capsys):
    ref = [1.0 + 0.1 * i for i in range(10)]
    (tmp_path / "a.json").write_text(json.dumps(_quality(ref, heldout=ref)))
    (tmp_path / "b.json").write_text(json.dumps(_quality([0.9 * x for x in ref], heldout=ref, weights="cand")))
    out = tmp_path / "cmp"
    assert main(["benchmark", "compare", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--out", str(out)]) == 0
    assert "candidate better on 1" in capsys.readouterr().out
    saved = json.loads((out / "compare.json").read_text())
    assert saved["rows"][0]["final"]["verdict"] == "candidate"
    assert "**candidate**" in (out / "compare.md").read_text()
    assert (out / "compare.png").read_bytes()[:4] == b"\x89PNG"
    # Results already there are replaced only with --force.
    assert main(["benchmark", "compare", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err


def test_command_rejects_unreadable_input(tmp_path, capsys):
    (tmp_path / "bad.json").write_text("not json")
    assert main(["benchmark", "compare", str(tmp_path / "bad.json"), str(tmp_path / "bad.json"),
                 "--out", str(tmp_path / "o")]) == 2
    assert "reference" in capsys.readouterr().err
    assert main(["benchmark", "compare", str(tmp_path / "missing.json"), str(tmp_path / "bad.json"),
                 "--out", str(tmp_path / "o")]) == 2
    assert "not a readable JSON file" in capsys.readouterr().err


def test_transformer_summary_reports_the_paired_test_against_tuned_adamw():
    from learned_optim.benchmarking import transformer

    def run(opt, lr, finals):
        n = len(finals)
        return {"optimizer": opt, "lr": lr, "seeds": list(range(n)), "final": finals, "min": finals,
                "test_acc": [None] * n, "diverged": [False] * n, "train_loss": finals, "wall_s": [1.0] * n,
                "step_ms": [1.0] * n}

    adamw = [1.70, 1.72, 1.69, 1.71, 1.70, 1.73]
    learned = [x - 0.01 * (i + 1) for i, x in enumerate(adamw)]
    wl = {"runs": {"adamw_lr=0.003": run("adamw", 3e-3, adamw), "adamw_lr=0.01": run("adamw", 1e-2, [2.0] * 6),
                   "learned_lr=0.001": run("learned", 1e-3, learned)}}
    v = transformer.summarize(wl)["vs_tuned"]["learned_lr=0.001"]
    d = [-0.01 * (i + 1) for i in range(6)]
    assert v["mean_delta"] == pytest.approx(statistics.mean(d))
    assert v["delta_se"] == pytest.approx(statistics.stdev(d) / math.sqrt(6))
    assert v["delta_p"] == pytest.approx(2 / 64)
    wl["runs"]["learned_lr=0.001"]["final"][0] = math.nan  # a diverged seed: no test
    v = transformer.summarize(wl)["vs_tuned"]["learned_lr=0.001"]
    assert v["delta_se"] is None and v["delta_p"] is None and v["mean_delta"] == math.inf


def test_quality_tasks_count_as_decided_only_when_the_seeds_agree():
    from learned_optim.benchmarking import quality_stats

    base = [1.0 + 0.1 * i for i in range(10)]
    lower = quality_stats._versus([0.8 * x for x in base], base, 0.8, 1.0)
    assert lower["paired_verdict"] == -1 and lower["paired_p"] == pytest.approx(2 / 1024)
    # One chaotic seed 3x worse among nine slightly better ones: the mean-based verdict loses,
    # the paired test calls neither side.
    chaotic = [0.99 * x for x in base[:9]] + [3 * base[9]]
    mixed = quality_stats._versus(chaotic, base, statistics.mean(chaotic), statistics.mean(base))
    assert mixed["task_verdict"] == 1 and mixed["paired_verdict"] == 0
    tot = quality_stats._won_tied_lost([lower, mixed])
    assert (tot["tasks_won_paired"], tot["tasks_lost_paired"]) == (1, 0)
    del mixed["paired_verdict"]  # a result saved before the test was recorded
    assert quality_stats._won_tied_lost([lower, mixed])["tasks_won_paired"] is None


def test_learned_lrs_in_one_result_only_are_listed_as_skipped():
    ref, cand = _transformer([1.7, 1.8]), _transformer([1.6, 1.7])
    extra = dict(cand["workloads"]["gpt-byte"]["runs"]["learned_lr=0.001"], lr=1e-4)
    cand["workloads"]["gpt-byte"]["runs"]["learned_lr=0.0001"] = extra
    comp = compare.compare_results(ref, cand)
    assert [r["name"] for r in comp["rows"]] == ["gpt-byte, lr 0.001"]
    assert comp["skipped"] == ["gpt-byte, learned lr 0.0001 (only in the candidate)"]
    assert "Not compared: gpt-byte, learned lr 0.0001 (only in the candidate)." in compare.compare_markdown(comp)
