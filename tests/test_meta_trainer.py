"""The meta-training loop: a tiny run, determinism, resume after kill -9, fine-tuning."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import train_interrupted_then_resumed
from safetensors.torch import load_file

from learned_optim import LearnedOptimizer, from_pretrained
from learned_optim.meta import MetaTrainConfig, meta_train
from learned_optim.meta.trainer import CHECKPOINT_NAME, LOG_NAME, load_config
from learned_optim.network import WEIGHT_NAMES

ROOT = Path(__file__).resolve().parents[1]


def _weights(d):
    return load_file(str(Path(d) / "model.safetensors"))


def test_tiny_meta_training_run(tmp_path):
    net = meta_train("tiny", out=tmp_path, progress=False)
    # saved in the hub format, loadable, usable by the optimizer
    loaded = from_pretrained(tmp_path)
    prov = loaded.provenance
    assert prov["trained"] is True and prov["meta_train_config"] == load_config("tiny").to_dict()
    assert prov["meta_steps_done"] == 6
    assert all(torch.equal(getattr(loaded, n), getattr(net, n)) for n in ("weight", "head_weight"))
    # training changed the rule: the head is no longer the zero (Adam-equivalent) head
    assert loaded.head_weight.abs().sum() > 0 or loaded.head_bias.abs().sum() > 0
    model = torch.nn.Linear(3, 1)
    opt = LearnedOptimizer(model.parameters(), weights=tmp_path)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    events = [json.loads(line) for line in (tmp_path / LOG_NAME).read_text().splitlines()]
    assert events[0]["event"] == "start" and events[-1]["event"] == "done"
    steps = [e["step"] for e in events if e["event"] == "step"]
    assert steps == [1, 2, 3, 4, 5, 6]
    evals = [e for e in events if e["event"] == "eval"]
    assert [e["step"] for e in evals] == [0, 3, 6]
    ck = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)
    assert ck["step"] == 6


def test_runs_are_deterministic_and_refuse_to_overwrite(tmp_path):
    meta_train("tiny", out=tmp_path / "a", progress=False)
    meta_train("tiny", out=tmp_path / "b", progress=False)
    meta_train("tiny", out=tmp_path / "c", progress=False, seed=1)
    a, b, c = _weights(tmp_path / "a"), _weights(tmp_path / "b"), _weights(tmp_path / "c")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    with pytest.raises(ValueError, match="pass resume=True"):
        meta_train("tiny", out=tmp_path / "a", progress=False)
    with pytest.raises(ValueError, match="different config"):
        meta_train("tiny", out=tmp_path / "a", progress=False, resume=True, meta_steps=7)


_SCRIPT = """
import sys
from learned_optim.meta import meta_train
meta_train("tiny", out=sys.argv[1], progress=False, resume=True, meta_steps=20, checkpoint_every=1, eval_every=10)
"""


def test_resume_after_kill_9_loses_nothing(tmp_path):
    ref = tmp_path / "ref"
    meta_train("tiny", out=ref, progress=False, meta_steps=20, checkpoint_every=1, eval_every=10)

    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-c", _SCRIPT, str(out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    log = out / LOG_NAME
    deadline = time.monotonic() + 120
    killed_at = None
    while time.monotonic() < deadline and proc.poll() is None:
        if log.is_file():
            steps = [json.loads(x)["step"] for x in log.read_text().splitlines() if x.endswith("}")]
            if steps and max(steps) >= 6:
                proc.send_signal(signal.SIGKILL)
                killed_at = max(steps)
                break
        time.sleep(0.005)
    proc.wait()
    assert killed_at is not None and proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    ck = torch.load(out / CHECKPOINT_NAME, weights_only=True)
    assert 0 < ck["step"] < 20

    # resume (here, in this process: the state comes only from what the killed one left on disk)
    meta_train("tiny", out=out, progress=False, resume=True, meta_steps=20, checkpoint_every=1, eval_every=10)
    a, b = _weights(ref), _weights(out)
    assert all(torch.equal(a[k], b[k]) for k in a)
    ca = torch.load(ref / CHECKPOINT_NAME, weights_only=True)
    cb = torch.load(out / CHECKPOINT_NAME, weights_only=True)
    assert all(torch.equal(ca["net"][k], cb["net"][k]) for k in ca["net"])

    def steps(d):
        return [(e["step"], e["meta_loss"]) for e in map(json.loads, (d / LOG_NAME).read_text().splitlines())
                if e["event"] == "step"]

    assert steps(ref) == steps(out)  # the log reads as one uninterrupted run


def test_fine_tune_from_shipped_weights_on_a_user_model(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(64, 5)
    y = (x[:, 0] - x[:, 1] > 0).long()
    model = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    base = from_pretrained("adam-equivalent")
    net = meta_train("tiny", out=tmp_path, init="adam-equivalent", tasks=[(model, (x, y))], progress=False,
                     val_tasks=[((model, (x, y)), 20)])
    assert net.config == base.config
    assert net.provenance["init"] == "adam-equivalent" and net.provenance["custom_tasks"] is True
    assert not torch.equal(net.head_weight, base.head_weight) or not torch.equal(net.head_bias, base.head_bias)
    # the shipped weights are untouched
    assert torch.equal(from_pretrained("adam-equivalent").head_weight, base.head_weight)


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="estimator must be one of"):
        MetaTrainConfig(estimator="sgd")
    with pytest.raises(ValueError, match="unknown meta-training config field"):
        MetaTrainConfig.from_dict({"meta_stepz": 3})
    with pytest.raises(ValueError, match="horizon_max"):
        MetaTrainConfig(horizon_min=50, horizon_max=10)
    with pytest.raises(ValueError, match="meta_steps must be a positive int"):
        MetaTrainConfig(meta_steps=0)
    with pytest.raises(ValueError, match="network is not a valid"):
        MetaTrainConfig(network={"hidden_size": -1})
    with pytest.raises(ValueError, match="neither a preset"):
        load_config("no-such-preset")
    assert MetaTrainConfig.from_dict(MetaTrainConfig().to_dict()) == MetaTrainConfig()
    with pytest.raises(ValueError, match="out must be given"):
        meta_train("tiny", out=None)
    with pytest.raises(ValueError, match="is a file; pass a directory"):
        meta_train("tiny", out=__file__)
    with pytest.raises(TypeError, match="cannot use a str as a task"):
        meta_train("tiny", out="unused", tasks=["not a task"])


def test_validation_metric_mean_or_worst_task():
    from learned_optim.meta.task_families import tiny_validation_tasks
    from learned_optim.meta.validation import adam_baselines, evaluate
    from learned_optim.network import CoordinatewiseLSTM

    tasks = tiny_validation_tasks()
    tasks = [tasks[0], (tasks[0][0], 2 * tasks[0][1])]  # two tasks that give different ratios
    base = adam_baselines(tasks, 1)
    net = CoordinatewiseLSTM(seed=3)
    with torch.no_grad():
        net.head_bias.fill_(0.5)  # not Adam: ratios differ from 1
    kw = dict(inner_lr=1e-3, loss_cap=1.5)
    mean, worst = evaluate(net, tasks, base, **kw), evaluate(net, tasks, base, reduce="max", **kw)
    logs = [math.log(r["ratio_vs_tuned"]) for r in mean["rows"]]
    assert logs[0] != pytest.approx(logs[1])
    assert mean["metric"] == pytest.approx(sum(logs) / 2) and worst["metric"] == pytest.approx(max(logs))
    with pytest.raises(ValueError, match="reduce must be 'mean' or 'max'"):
        evaluate(net, tasks, base, reduce="median", **kw)


def test_run_inner_recipes_and_argument_errors():
    """``validation.run_inner``: the default recipe is the constant lr (what every validation record used);
    "scheduled" changes the run; Adam (weights=None) and a zero-head rule agree under both; bad recipe and
    clip_norm values are refused naming the argument."""
    from learned_optim.meta.task_families import tiny_validation_tasks
    from learned_optim.meta.validation import run_inner
    from learned_optim.network import CoordinatewiseLSTM

    task, _ = tiny_validation_tasks()[0]
    zero = CoordinatewiseLSTM()  # zero head: Adam's step
    finals = {}
    for recipe in ("constant", "scheduled"):
        a = run_inner(task, 40, 3, recipe=recipe, clip_norm=1.0)["final_loss"]
        b = run_inner(task, 40, 3, weights=zero, recipe=recipe, clip_norm=1.0)["final_loss"]
        assert a == pytest.approx(b, rel=1e-4), recipe
        finals[recipe] = a
    assert finals["constant"] != pytest.approx(finals["scheduled"], rel=1e-4)
    assert run_inner(task, 40, 3) == run_inner(task, 40, 3, recipe="constant", clip_norm=None)
    with pytest.raises(ValueError, match="recipe must be"):
        run_inner(task, 5, 0, recipe="cosine")
    with pytest.raises(ValueError, match="clip_norm must be positive"):
        run_inner(task, 5, 0, clip_norm=0.0)


def test_validation_subset_with_indices_keeps_the_full_sets_seeds():
    from learned_optim.meta.task_families import tiny_validation_tasks
    from learned_optim.meta.validation import adam_baselines, evaluate
    from learned_optim.network import CoordinatewiseLSTM

    task, horizon = tiny_validation_tasks()[0]
    tasks = [(task, horizon), (task, 2 * horizon), (task, 3 * horizon)]
    net = CoordinatewiseLSTM(seed=3)
    with torch.no_grad():
        net.head_bias.fill_(0.5)
    kw = dict(inner_lr=1e-3, loss_cap=1.5, seeds=2)
    full_base = adam_baselines(tasks, 2)
    ev = evaluate(net, tasks, full_base, **kw)
    full = ev["rows"]
    # the per-seed log ratios behind each task's ratio
    assert [len(x) for x in ev["log_ratios"]] == [2, 2, 2]
    assert [math.exp(sum(x) / 2) for x in ev["log_ratios"]] == pytest.approx([r["ratio_vs_tuned"] for r in full])
    # the third task alone, at its index in the full set: the full set's rows, bit for bit
    sub_base = adam_baselines(tasks[2:], 2, indices=[2])
    assert sub_base == full_base[2:]
    assert evaluate(net, tasks[2:], sub_base, indices=[2], **kw)["rows"] == full[2:]
    # without indices the task runs with the first task's seeds: other numbers
    assert adam_baselines(tasks[2:], 2)[0]["tuned_adam_seeds"] != full_base[2]["tuned_adam_seeds"]
    with pytest.raises(ValueError, match="indices must hold one int >= 0 per task"):
        adam_baselines(tasks[2:], 2, indices=[1, 2])
    with pytest.raises(ValueError, match="indices must hold one int >= 0 per task"):
        evaluate(net, tasks[2:], sub_base, indices=[-1], **kw)
    with pytest.raises(TypeError, match="indices must be a list of ints"):
        evaluate(net, tasks[2:], sub_base, indices="2", **kw)


def test_rise_penalty_run_resumes_exactly(tmp_path):
    from learned_optim.meta.trainer import MetaTrainer

    # at inner lr 0.3 the tiny tasks' losses rise between truncation ends, so the penalty has a say
    cfg = load_config("tiny").replace(rise_penalty=1.0, meta_steps=8, checkpoint_every=1, eval_every=4, inner_lr=0.3)
    ref = MetaTrainer(cfg, tmp_path / "ref", progress=False)
    ref.train()
    assert any(t is not None and t.best_log is not None for t in ref.trajs)  # the penalty was computed

    _, b = train_interrupted_then_resumed(cfg, tmp_path / "cut", 5)

    def last(d):  # the network after the last meta-step (the saved weights are the selected ones)
        return torch.load(tmp_path / d / CHECKPOINT_NAME, weights_only=True)["net"]

    a = last("ref")
    assert all(torch.equal(a[k], b[k]) for k in a)
    # and the penalty changed the run
    MetaTrainer(cfg.replace(rise_penalty=0.0), tmp_path / "plain", progress=False).train()
    c = last("plain")
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_saved_evaluations_and_reused_baselines_change_nothing(tmp_path):
    from learned_optim.meta.task_families import tiny_validation_tasks
    from learned_optim.meta.trainer import BASELINES_NAME, EVALS_DIR
    from learned_optim.meta.validation import adam_baselines

    meta_train("tiny", out=tmp_path / "ref", progress=False)
    rows = json.loads((tmp_path / "ref" / BASELINES_NAME).read_text())
    assert rows == adam_baselines(tiny_validation_tasks(), load_config("tiny").val_seeds)
    # a run that reuses the first run's baselines and saves every evaluation: same weights, same log
    meta_train("tiny", out=tmp_path / "b", progress=False, val_baselines=tmp_path / "ref" / BASELINES_NAME,
               save_evals=True)
    ref, b = _weights(tmp_path / "ref"), _weights(tmp_path / "b")
    assert all(torch.equal(ref[k], b[k]) for k in ref)
    strip = [{k: v for k, v in json.loads(line).items() if k != "elapsed"}
             for line in (tmp_path / "ref" / LOG_NAME).read_text().splitlines()]
    assert strip == [{k: v for k, v in json.loads(line).items() if k != "elapsed"}
                     for line in (tmp_path / "b" / LOG_NAME).read_text().splitlines()]
    assert json.loads((tmp_path / "b" / BASELINES_NAME).read_text()) == rows
    saved = sorted(p.name for p in (tmp_path / "b" / EVALS_DIR).iterdir())
    assert saved == ["step0", "step3", "step6"] and not (tmp_path / "ref" / EVALS_DIR).exists()
    # step 0 is the fresh network (the zero head); the selected step's weights are the run's output
    assert from_pretrained(tmp_path / "b" / EVALS_DIR / "step0").head_weight.abs().sum() == 0
    best = from_pretrained(tmp_path / "b").provenance["selected_step"]
    sel = _weights(tmp_path / "b" / EVALS_DIR / f"step{best}")
    assert all(torch.equal(sel[k], b[k]) for k in b)


def test_size_prior_is_added_to_the_written_weights_only(tmp_path):
    """``size_prior`` changes nothing in meta-training (same log); the output and the saved
    evaluations are the plain run's weights with ``with_size_prior`` applied."""
    from learned_optim.meta.trainer import EVALS_DIR

    meta_train("tiny", out=tmp_path / "ref", progress=False, save_evals=True)
    meta_train("tiny", out=tmp_path / "p", progress=False, save_evals=True, size_prior=-0.3)
    logs = [[{k: v for k, v in json.loads(line).items() if k != "elapsed"}
             for line in (tmp_path / d / LOG_NAME).read_text().splitlines()] for d in ("ref", "p")]
    assert logs[1][0]["config"].pop("size_prior") == -0.3  # the first record is the config
    assert logs[0][0]["config"].pop("size_prior") == 0.0
    assert logs[0] == logs[1]
    for sub in (".", f"{EVALS_DIR}/step3"):
        want = from_pretrained(tmp_path / "ref" / sub).with_size_prior(-0.3)
        got = from_pretrained(tmp_path / "p" / sub)
        assert got.config == want.config and "log_num_params" in got.config.context_features
        assert all(torch.equal(getattr(got, k), getattr(want, k)) for k in ("weight", "bias", "head_weight",
                                                                            "head_bias"))
    assert from_pretrained(tmp_path / "p").provenance["size_prior"] == -0.3
    assert from_pretrained(tmp_path / "p").provenance["meta_train_config"]["size_prior"] == -0.3
    with pytest.raises(ValueError, match="size_prior"):
        meta_train("tiny", out=tmp_path / "bad", progress=False, size_prior=float("nan"))
    # on the capped input: the same plain weights with that prior
    meta_train("tiny", out=tmp_path / "c", progress=False, size_prior=-0.3, size_prior_feature="log_num_params_capped")
    want = from_pretrained(tmp_path / "ref").with_size_prior(-0.3, feature="log_num_params_capped")
    got = from_pretrained(tmp_path / "c")
    assert got.config == want.config and got.provenance["size_prior_capped"] == -0.3
    assert all(torch.equal(getattr(got, k), getattr(want, k)) for k in ("weight", "bias", "head_weight", "head_bias"))
    with pytest.raises(ValueError, match="size_prior_feature"):
        meta_train("tiny", out=tmp_path / "bad", progress=False, size_prior=-0.3, size_prior_feature="p_log_rms")
    # the vector prior, after the size prior: the same plain weights with both
    meta_train("tiny", out=tmp_path / "v", progress=False, size_prior=-0.3, size_prior_feature="log_num_params_capped",
               vector_prior=0.35)
    want = from_pretrained(tmp_path / "ref").with_size_prior(-0.3, feature="log_num_params_capped")
    want = want.with_step_prior(0.35, "is_vector_large")
    got = from_pretrained(tmp_path / "v")
    assert got.config == want.config and got.config.context_features[-1] == "is_vector_large"
    assert got.provenance["large_vector_prior"] == 0.35 and got.provenance["meta_train_config"]["vector_prior"] == 0.35
    assert all(torch.equal(getattr(got, k), getattr(want, k)) for k in ("weight", "bias", "head_weight", "head_bias"))
    with pytest.raises(ValueError, match="vector_prior"):
        meta_train("tiny", out=tmp_path / "bad", progress=False, vector_prior=float("inf"))
    # the ratio prior, after both: the same plain weights with all three, in that order
    meta_train("tiny", out=tmp_path / "r", progress=False, size_prior=-0.3, size_prior_feature="log_num_params_capped",
               vector_prior=0.35, ratio_prior=0.38)
    want = want.with_step_prior(0.38, "grad_log_ratio_large")
    got = from_pretrained(tmp_path / "r")
    assert got.config == want.config and got.config.context_features[-2:] == ("is_vector_large", "grad_log_ratio_large")
    assert got.provenance["large_grad_log_ratio_prior"] == 0.38
    assert got.provenance["meta_train_config"]["ratio_prior"] == 0.38
    assert all(torch.equal(getattr(got, k), getattr(want, k)) for k in ("weight", "bias", "head_weight", "head_bias"))
    with pytest.raises(ValueError, match="ratio_prior"):
        meta_train("tiny", out=tmp_path / "bad", progress=False, ratio_prior="0.38")
    # the cautious mask, after the priors: the same weights, the mask on in the written config only
    meta_train("tiny", out=tmp_path / "cm", progress=False, size_prior=-0.3, size_prior_feature="log_num_params_capped",
               vector_prior=0.35, cautious_mask=1.0)
    want = from_pretrained(tmp_path / "v").with_cautious_mask(1.0)
    got = from_pretrained(tmp_path / "cm")
    assert got.config == want.config and got.config.cautious_scale == 1.0
    assert from_pretrained(tmp_path / "v").config.cautious_scale == 0.0
    assert got.provenance["cautious_mask"] == 1.0 and got.provenance["meta_train_config"]["cautious_mask"] == 1.0
    assert all(torch.equal(getattr(got, k), getattr(want, k)) for k in ("weight", "bias", "head_weight", "head_bias"))
    with pytest.raises(ValueError, match="cautious_mask"):
        meta_train("tiny", out=tmp_path / "bad", progress=False, cautious_mask=-1.0)
    # and its per-tensor rescale
    meta_train("tiny", out=tmp_path / "cr", progress=False, size_prior=-0.3, size_prior_feature="log_num_params_capped",
               vector_prior=0.35, cautious_mask=1.0, cautious_rescale=True)
    got = from_pretrained(tmp_path / "cr")
    assert got.config == from_pretrained(tmp_path / "v").with_cautious_mask(1.0, rescale=True).config
    assert got.config.cautious_rescale and got.provenance["cautious_rescale"] is True
    assert all(torch.equal(getattr(got, k), getattr(want, k)) for k in ("weight", "bias", "head_weight", "head_bias"))
    with pytest.raises(ValueError, match="cautious_rescale"):
        meta_train("tiny", out=tmp_path / "bad", progress=False, cautious_rescale=True)


def test_prior_in_training_holds_the_priors_fixed_while_the_rest_learns(tmp_path):
    """With ``prior_in_training`` the run starts from the init plus the priors, the two head
    weights they set never move, the rest of the rule trains with them in place (another log
    than adding them on saving), and the written weights carry them once."""
    from learned_optim.meta.trainer import EVALS_DIR

    kw = dict(size_prior=-0.3, size_prior_feature="log_num_params_capped", vector_prior=0.35)
    meta_train("tiny", out=tmp_path / "ref", progress=False, save_evals=True, **kw)
    meta_train("tiny", out=tmp_path / "in", progress=False, save_evals=True, prior_in_training=True, **kw)
    ref, got = from_pretrained(tmp_path / "ref"), from_pretrained(tmp_path / "in")
    assert got.config == ref.config
    h, names = got.config.hidden_size, got.config.context_features
    cols = [h + names.index("log_num_params_capped"), h + names.index("is_vector_large")]
    for sub in (f"{EVALS_DIR}/step0", f"{EVALS_DIR}/step3", f"{EVALS_DIR}/step6", "."):
        net = from_pretrained(tmp_path / "in" / sub)
        assert torch.equal(net.head_weight[0, cols], torch.tensor([-0.3, 0.35]))  # exactly, in float32
        assert net.provenance["size_prior_capped"] == -0.3 and net.provenance["large_vector_prior"] == 0.35
    # step 0 is the same starting rule either way; after it, training saw the priors
    start = [from_pretrained(tmp_path / d / EVALS_DIR / "step0") for d in ("ref", "in")]
    assert all(torch.equal(getattr(start[0], k), getattr(start[1], k)) for k in WEIGHT_NAMES)
    assert not torch.equal(ref.weight, got.weight)
    logs = [[json.loads(line) for line in (tmp_path / d / LOG_NAME).read_text().splitlines()] for d in ("ref", "in")]
    assert [r.get("meta_loss") for r in logs[0]] != [r.get("meta_loss") for r in logs[1]]
    with pytest.raises(ValueError, match="prior_in_training"):
        meta_train("tiny", out=tmp_path / "bad", progress=False, prior_in_training="yes")
    # fine-tuning weights that carry the priors with a config that adds them again: said, with the fix
    with pytest.warns(UserWarning, match=r"already carry a prior \(size_prior_capped=-0.3, large_vector_prior=0.35\)"
                      r".*--set size_prior=0 --set vector_prior=0 --set ratio_prior=0"):
        meta_train("tiny", out=tmp_path / "twice", progress=False, init=tmp_path / "in", meta_steps=1, **kw)
    # interrupted and resumed: the same last network, priors still in place
    from learned_optim.meta.trainer import MetaTrainer

    cfg = load_config("tiny").replace(prior_in_training=True, meta_steps=6, checkpoint_every=1, **kw)
    MetaTrainer(cfg, tmp_path / "whole", progress=False).train()
    _, cut = train_interrupted_then_resumed(cfg, tmp_path / "cut", 4)
    whole = torch.load(tmp_path / "whole" / CHECKPOINT_NAME, weights_only=True)["net"]
    assert all(torch.equal(whole[k], cut[k]) for k in whole)
    assert torch.equal(cut["head_weight"][0, cols], torch.tensor([-0.3, 0.35]))


def test_reused_baselines_are_taken_only_where_they_match(tmp_path):
    from learned_optim.meta.task_families import tiny_validation_tasks
    from learned_optim.meta.validation import adam_baselines

    (task, _), = tiny_validation_tasks()
    tasks = [(task, 3), (task, 4), (task, 5)]  # short horizons: the grid of Adam runs stays cheap
    fresh = adam_baselines(tasks, 2)
    marked = [dict(r, tuned_adam=-1.0) for r in fresh]  # a value no computation gives: shows what was reused
    assert [r["tuned_adam"] for r in adam_baselines(tasks, 2, reuse=marked)] == [-1.0] * len(tasks)
    # another horizon, another task name, or another seed count: recomputed, equal to a fresh computation
    other = [dict(marked[0], horizon=marked[0]["horizon"] + 1), dict(marked[1], task="other")] + marked[2:]
    got = adam_baselines(tasks, 2, reuse=other)
    assert got[:2] == fresh[:2] and all(r["tuned_adam"] == -1.0 for r in got[2:])
    assert adam_baselines(tasks, 1, reuse=marked) == adam_baselines(tasks, 1)
    assert adam_baselines(tasks, 2, reuse=marked[:1])[1:] == fresh[1:]  # a shorter list covers the first tasks
    with pytest.raises(TypeError, match="reuse must be a list"):
        adam_baselines(tasks, 1, reuse="rows.json")


def test_bad_val_baselines_and_save_evals_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="val_baselines=.*is not a file"):
        meta_train("tiny", out=tmp_path / "a", progress=False, val_baselines=tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="val_baselines=.*not valid JSON"):
        meta_train("tiny", out=tmp_path / "a", progress=False, val_baselines=tmp_path / "bad.json")
    (tmp_path / "obj.json").write_text('{"task": "x"}')
    with pytest.raises(ValueError, match="val_baselines must be a list of baseline rows"):
        meta_train("tiny", out=tmp_path / "a", progress=False, val_baselines=tmp_path / "obj.json")
    with pytest.raises(TypeError, match="save_evals must be True or False"):
        meta_train("tiny", out=tmp_path / "a", progress=False, save_evals="yes")
