"""Few-shot family: episodes, the meta-gradient through the unrolled inner loop, training, benchmark."""

import argparse
import json

import pytest
import torch

from learned_optim import CoordinatewiseLSTM, LearnedOptimizer, LSTMOptimizerConfig, from_pretrained
from learned_optim.benchmarking.few_shot import add_cli_arguments, evaluate, run_cli
from learned_optim.meta.few_shot import (
    EpisodeSampler,
    FewShotConfig,
    adapt,
    digits_classes,
    init_params,
    load_init,
    mlp_logits,
    train_few_shot,
)


def _benchmark(argv):
    """``learned-optim benchmark few-shot ARGV`` through the options and runner the CLI wires."""
    parser = argparse.ArgumentParser(prog="learned-optim benchmark few-shot")
    add_cli_arguments(parser)
    return run_cli(parser.parse_args(argv))


def test_digits_classes_split_and_episodes():
    x, y, train, held = digits_classes()
    assert len(train) == 20 and len(held) == 20 and not set(train) & set(held)
    sampler = EpisodeSampler(x, y, held, n_way=5, q_query=15)
    gen = torch.Generator().manual_seed(0)
    xs, ys, xq, yq = sampler.sample(5, gen)
    assert xs.shape == (25, 64) and xq.shape == (75, 64)
    assert sorted(ys.unique().tolist()) == list(range(5)) and sorted(yq.unique().tolist()) == list(range(5))
    # Support and query are disjoint examples.
    s = {tuple(r) for r in xs.tolist()}
    assert not any(tuple(r) in s for r in xq.tolist())


def test_sampler_bad_input():
    x, y = torch.zeros(10, 3), torch.arange(10) % 2
    with pytest.raises(ValueError, match="n_way"):
        EpisodeSampler(x, y, [0, 1], n_way=5, q_query=1)
    with pytest.raises(ValueError, match="X must be"):
        EpisodeSampler(x[:, 0], y, [0, 1], n_way=2, q_query=1)
    with pytest.raises(ValueError, match="n_way"):
        FewShotConfig(n_way=1)


def _tiny_problem():
    gen = torch.Generator().manual_seed(0)
    xs = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    ys = torch.tensor([0, 1, 0, 1])
    xq = torch.randn(6, 3, generator=gen, dtype=torch.float64)
    yq = torch.tensor([0, 1, 1, 0, 1, 0])
    theta0 = init_params(3, 3, 2, gen, dtype=torch.float64)
    net = CoordinatewiseLSTM(LSTMOptimizerConfig(hidden_size=2), seed=4).double()
    with torch.no_grad():
        net.head_weight.normal_(0, 0.5, generator=gen)
        net.head_bias.normal_(0, 0.3, generator=gen)
    return (xs, ys), (xq, yq), theta0, net


def _meta_loss(net, theta0, support, query, lr, create_graph=True):
    theta, _ = adapt("learned", theta0, support, steps=3, lr=lr, hidden=3, n_way=2, network=net,
                     create_graph=create_graph)
    return torch.nn.functional.cross_entropy(mlp_logits(theta, query[0], 3, 2), query[1])


def test_meta_gradient_is_nonzero_and_matches_finite_differences():
    support, query, theta0, net = _tiny_problem()
    lr = torch.tensor(0.1, dtype=torch.float64, requires_grad=True)
    loss = _meta_loss(net, theta0, support, query, lr)
    loss.backward()
    for name in ("weight", "bias", "head_weight", "head_bias"):
        param = getattr(net, name)
        assert param.grad is not None and param.grad.abs().max() > 1e-6, name
        flat = param.detach().view(-1)
        for i in range(0, flat.numel(), max(1, flat.numel() // 4)):
            orig = flat[i].item()
            vals = []
            for delta in (1e-6, -1e-6):
                with torch.no_grad():
                    param.view(-1)[i] = orig + delta
                vals.append(_meta_loss(net, theta0, support, query, lr.detach()).item())
            with torch.no_grad():
                param.view(-1)[i] = orig
            fd = (vals[0] - vals[1]) / 2e-6
            assert abs(fd - param.grad.view(-1)[i].item()) < 1e-6 * max(1.0, abs(fd)), (name, i)
    assert lr.grad is not None and lr.grad.abs() > 0


@pytest.mark.parametrize("method", ["learned", "sgd", "adam"])
def test_meta_gradient_wrt_the_init_matches_finite_differences(method):
    """learn_init (MAML-style): the query loss after the unrolled inner loop is differentiated
    w.r.t. the initialisation itself, for every inner optimizer (float64)."""
    support, query, theta0, net = _tiny_problem()
    theta0 = theta0.clone().requires_grad_()

    def meta_loss(th):
        theta, _ = adapt(method, th, support, steps=3, lr=0.1, hidden=3, n_way=2, network=net, create_graph=True)
        return torch.nn.functional.cross_entropy(mlp_logits(theta, query[0], 3, 2), query[1])

    (grad,) = torch.autograd.grad(meta_loss(theta0), theta0)
    assert grad.abs().max() > 1e-6
    base = theta0.detach()
    for i in range(0, base.numel(), 3):
        plus, minus = base.clone(), base.clone()
        plus[i] += 1e-6
        minus[i] -= 1e-6
        fd = (meta_loss(plus).item() - meta_loss(minus).item()) / 2e-6
        assert abs(fd - grad[i].item()) < 1e-6 * max(1.0, abs(fd)), (method, i, fd, grad[i].item())


def test_detaching_inner_updates_cuts_the_meta_gradient():
    """The tutorial failure mode: detach theta after each inner step and the optimizer's weights get
    no meta-gradient at all. Our default (create_graph=True) keeps it."""
    support, query, theta0, net = _tiny_problem()
    loss = _meta_loss(net, theta0, support, query, 0.1, create_graph=False)
    assert not loss.requires_grad


def test_adam_method_matches_learned_optimizer():
    """adapt('adam') is the zero-head rule, i.e. the same update LearnedOptimizer makes untrained."""
    support, _, theta0, net = _tiny_problem()
    theta, _ = adapt("adam", theta0, support, steps=3, lr=0.1, hidden=3, n_way=2, network=net)
    p = theta0.clone().requires_grad_()
    opt = LearnedOptimizer([p], CoordinatewiseLSTM(net.config), lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(mlp_logits(p, support[0], 3, 2), support[1]).backward()
        opt.step()
    torch.testing.assert_close(p.detach(), theta, rtol=0, atol=1e-12)


def test_adam_method_is_plain_adam_for_a_rule_with_the_cautious_mask():
    """The Adam baseline of a rule whose config has the cautious mask (and its rescale) is plain Adam,
    not Adam with the mask: the same steps as for the rule without it."""
    support, _, theta0, net = _tiny_problem()
    masked = net.with_cautious_mask(1.0, rescale=True)
    plain, _ = adapt("adam", theta0, support, steps=3, lr=0.1, hidden=3, n_way=2, network=net)
    got, _ = adapt("adam", theta0, support, steps=3, lr=0.1, hidden=3, n_way=2, network=masked)
    assert torch.equal(got, plain)
    learned, _ = adapt("learned", theta0, support, steps=3, lr=0.1, hidden=3, n_way=2, network=masked)
    assert not torch.equal(learned, plain)  # the rule itself keeps its mask


def test_tiny_training_run_saves_loadable_weights(tmp_path):
    cfg = FewShotConfig(meta_steps=3, meta_batch=2, tune_episodes=3, inner_steps=3, hidden=8)
    net, prov = train_few_shot(cfg, out=tmp_path, progress=False)
    loaded = from_pretrained(tmp_path)
    assert loaded.provenance["inner_lr"] > 0 and loaded.provenance["few_shot_config"]["inner_steps"] == 3
    # Training moved the head away from the Adam start.
    assert torch.count_nonzero(loaded.head_weight) > 0
    res = evaluate(loaded, cfg, k_shot=1, episodes=5, lrs={"learned": prov["inner_lr"], "sgd": 0.3}, progress=False)
    assert set(res) == {"learned", "sgd"} and len(res["sgd"]["per_step"]) == 4


def test_learn_init_saves_a_loadable_init_that_training_moved(tmp_path):
    cfg = FewShotConfig(meta_steps=3, meta_batch=2, tune_episodes=3, inner_steps=3, hidden=8, learn_init=True)
    net, prov = train_few_shot(cfg, out=tmp_path, progress=False)
    assert prov["learned_init"] == "few_shot_init.safetensors" and (tmp_path / "few_shot_init.safetensors").is_file()
    loaded = from_pretrained(tmp_path)  # the extra file does not disturb strict weight loading
    cfg2 = FewShotConfig.from_dict(loaded.provenance["few_shot_config"])
    assert cfg2.learn_init is True
    theta = load_init(tmp_path, cfg2, 64)
    start = init_params(64, 8, 5, torch.Generator().manual_seed(cfg.seed + 3))
    assert theta.shape == start.shape and not torch.equal(theta, start)  # meta-training moved it
    res = evaluate(loaded, cfg2, k_shot=1, episodes=4, lrs={"learned": prov["inner_lr"]}, inits={"learned": theta},
                   progress=False)
    assert 0 <= res["learned"]["accuracy"] <= 1
    with pytest.raises(ValueError, match="expected a finite flat vector"):
        load_init(tmp_path, FewShotConfig(hidden=9), 64)
    with pytest.raises(FileNotFoundError, match="no learned initialisation"):
        load_init(tmp_path / "nowhere", cfg2, 64)
    with pytest.raises(TypeError, match="learn_init"):
        FewShotConfig(learn_init="yes")


def test_few_shot_benchmark_quick(tmp_path):
    threads = torch.get_num_threads()
    assert _benchmark(["--quick", "--out", str(tmp_path), "--no-progress"]) == 0
    assert torch.get_num_threads() == threads  # --threads applies to the run only
    data = json.loads((tmp_path / "few_shot.json").read_text())
    assert data["command"].startswith("learned-optim benchmark few-shot --quick")
    assert data["machine"]["torch_threads"] == 1
    for setting in data["results"].values():
        assert set(setting) == {"learned", "sgd", "adam"}
        for r in setting.values():
            assert 0 <= r["accuracy"] <= 1 and r["ci95"] >= 0
    assert (tmp_path / "few_shot.md").read_text().count("|") > 10
    assert (tmp_path / "few_shot.png").stat().st_size > 1000


def test_few_shot_benchmark_quick_learned_init(tmp_path):
    """--init learned: the learned optimizer starts from its meta-learned init, each baseline from
    one meta-learned for its own inner loop (recorded), all on the same held-out episodes."""
    assert _benchmark(["--quick", "--init", "learned", "--out", str(tmp_path), "--no-progress"]) == 0
    data = json.loads((tmp_path / "few_shot_learned_init.json").read_text())
    assert data["init"] == "learned" and set(data["baseline_init_training"]) == {"sgd", "adam"}
    for v in data["baseline_init_training"].values():
        assert v["meta_steps"] == 3 and v["lr"] > 0
    for setting in data["results"].values():
        assert set(setting) == {"learned", "sgd", "adam"}
    assert not (tmp_path / "few_shot.json").exists()  # the fresh-init results are never overwritten
    assert (tmp_path / "few_shot_learned_init.png").stat().st_size > 1000


def test_few_shot_benchmark_refuses_bad_options(tmp_path, capsys):
    # weights trained without a learned init are refused with a clear message
    assert _benchmark(["--weights", "lstm-fewshot-digits", "--init", "learned", "--out", str(tmp_path)]) == 2
    assert "trained without learn_init" in capsys.readouterr().err
    for argv, msg in ((["--episodes", "0"], "--episodes must be >= 1"),
                      (["--quick", "--weights", "lstm-fewshot-digits"], "drop --weights"),
                      (["--weights", str(tmp_path / "nowhere")], "nowhere")):
        assert _benchmark([*argv, "--out", str(tmp_path)]) == 2
        assert msg in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing was written
    (tmp_path / "few_shot.md").write_text("earlier results")
    assert _benchmark(["--quick", "--out", str(tmp_path)]) == 2  # never replaced without --force
    assert "--force" in capsys.readouterr().err and (tmp_path / "few_shot.md").read_text() == "earlier results"


def test_few_shot_benchmark_is_a_learned_optim_subcommand(tmp_path, capsys):
    from learned_optim.cli import main

    assert main(["benchmark", "few-shot", "--episodes", "0", "--out", str(tmp_path)]) == 2
    assert "learned-optim benchmark few-shot: error: --episodes must be >= 1" in capsys.readouterr().err


def test_cli_preset_trains_few_shot_weights(tmp_path):
    from learned_optim.cli import main

    args = ["meta-train", "--config", "few-shot", "--out", str(tmp_path), "--no-progress"]
    for kv in ("meta_steps=2", "meta_batch=2", "tune_episodes=2", "inner_steps=2", "hidden=4"):
        args += ["--set", kv]
    assert main(args) == 0
    assert from_pretrained(tmp_path).provenance["few_shot_config"]["inner_steps"] == 2
    assert main(["meta-train", "--config", "few-shot", "--out", str(tmp_path), "--set", "n_way=1"]) == 2
