"""Weights on disk and on the Hub: format, name resolution, offline Hub cache, strict validation."""

import json
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import learned_optim
from learned_optim import (
    DEFAULT_WEIGHTS,
    CoordinatewiseLSTM,
    LearnedOptimizer,
    LSTMOptimizerConfig,
    WeightsError,
    WeightsNotFoundError,
    from_pretrained,
    hub,
    list_shipped,
    push_to_hub,
    save_pretrained,
)


def _same(a: CoordinatewiseLSTM, b: CoordinatewiseLSTM) -> bool:
    return a.config == b.config and all(
        torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values())
    )


def test_save_load_roundtrip(tmp_path, random_net):
    random_net.provenance = {"trained_on": "nothing", "command": "pytest"}
    out = save_pretrained(random_net, tmp_path / "w", model_card="# card\n")
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["format_version"] == 1 and cfg["architecture"] == "CoordinatewiseLSTM"
    assert cfg["config"]["hidden_size"] == 4 and cfg["provenance"]["command"] == "pytest"
    loaded = from_pretrained(out)
    assert _same(loaded, random_net) and loaded.provenance == random_net.provenance
    # The mixin-style methods go through the same code.
    assert _same(CoordinatewiseLSTM.from_pretrained(str(out)), random_net)


def test_config_holds_every_rule_constant(tmp_path):
    cfg = LSTMOptimizerConfig(hidden_size=3, beta1=0.8, beta2=0.99, eps=1e-6, feature_clip=3.0,
                              log_scale_bound=1.0, direction_bound=0.1, features=("m_norm",))
    save_pretrained(CoordinatewiseLSTM(cfg), tmp_path)
    assert from_pretrained(tmp_path).config == cfg


def test_shipped_weights_load_and_adam_equivalent_is_exactly_adam():
    assert DEFAULT_WEIGHTS in list_shipped() and "adam-equivalent" in list_shipped()
    assert isinstance(from_pretrained(None), CoordinatewiseLSTM)
    net = from_pretrained("adam-equivalent")
    assert torch.count_nonzero(net.head_weight) == 0 and torch.count_nonzero(net.head_bias) == 0
    for name in list_shipped():
        assert (hub.shipped_dir() / name / "README.md").is_file(), f"{name} needs a model card"


def test_optimizer_accepts_every_kind_of_weights(tmp_path, random_net):
    save_pretrained(random_net, tmp_path / "local")
    p = torch.zeros(3, requires_grad=True)
    for w in (None, DEFAULT_WEIGHTS, str(tmp_path / "local"), tmp_path / "local", random_net):
        opt = LearnedOptimizer([p], weights=w)
        assert isinstance(opt.network, CoordinatewiseLSTM)
    assert LearnedOptimizer([p], weights=random_net).network is random_net


def _build_hub_cache(root: Path, repo: str, revs: dict, refs: dict) -> None:
    """A Hub cache laid out by hand as huggingface_hub lays it out: refs/<name> holds a commit
    hash, snapshots/<hash>/ holds the files."""
    base = root / ("models--" + repo.replace("/", "--"))
    for sha, net in revs.items():
        save_pretrained(net, base / "snapshots" / sha)
    (base / "refs").mkdir(parents=True, exist_ok=True)
    for ref, sha in refs.items():
        (base / "refs" / ref).write_text(sha)


SHA_MAIN = "a" * 40
SHA_V1 = "b" * 40


@pytest.fixture
def hub_cache(tmp_path, monkeypatch, random_net):
    other = CoordinatewiseLSTM(LSTMOptimizerConfig(hidden_size=2))
    _build_hub_cache(tmp_path, "acme/lopt", {SHA_MAIN: random_net, SHA_V1: other}, {"main": SHA_MAIN, "v1": SHA_V1})
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path, random_net, other


def test_hub_repo_id_through_real_hf_hub_download_offline(hub_cache, monkeypatch):
    import huggingface_hub

    calls = []
    real = huggingface_hub.hf_hub_download

    def spy(*args, **kwargs):
        calls.append((args, kwargs))
        return real(*args, **kwargs)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", spy)
    root, net_main, net_v1 = hub_cache
    assert _same(from_pretrained("acme/lopt"), net_main)
    assert len(calls) == 2 and calls[0][1]["local_files_only"] is True
    assert _same(from_pretrained("acme/lopt", revision="v1"), net_v1)
    assert _same(from_pretrained("acme/lopt", revision=SHA_V1), net_v1)
    opt = LearnedOptimizer([torch.zeros(2, requires_grad=True)], weights="acme/lopt", revision="v1")
    assert opt.network.config.hidden_size == 2


def test_hub_missing_repo_is_one_readable_error(hub_cache):
    root = hub_cache[0]
    with pytest.raises(WeightsNotFoundError) as info:
        from_pretrained("acme/not-there")
    msg = str(info.value)
    assert "acme/not-there" in msg and str(root) in msg and "offline" in msg
    assert info.value.__cause__ is None and info.value.__suppress_context__
    with pytest.raises(WeightsNotFoundError, match="revision 'v9'"):
        from_pretrained("acme/lopt", revision="v9")


def test_hub_env_set_before_import_subprocess(hub_cache):
    """The user's way: HF_HUB_CACHE / HF_HUB_OFFLINE in the environment of a fresh process."""
    root, net_main, _ = hub_cache
    code = textwrap.dedent(
        """
        import torch
        from learned_optim import LearnedOptimizer
        opt = LearnedOptimizer([torch.zeros(2, requires_grad=True)], weights="acme/lopt")
        print(float(opt.network.head_weight.abs().sum()))
        """
    )
    env = dict(os.environ, HF_HUB_CACHE=str(root), HF_HUB_OFFLINE="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert abs(float(out.stdout) - float(net_main.head_weight.detach().abs().sum())) < 1e-6


def test_unknown_name_is_one_readable_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(WeightsNotFoundError) as info:
        LearnedOptimizer([torch.zeros(2, requires_grad=True)], weights="no-such-weights")
    msg = str(info.value)
    assert "not a local directory" in msg and "not a shipped name" in msg and DEFAULT_WEIGHTS in msg


def test_weights_path_to_a_file_says_pass_the_directory(tmp_path, random_net):
    save_pretrained(random_net, tmp_path)
    with pytest.raises(WeightsError, match="pass the directory"):
        from_pretrained(tmp_path / "model.safetensors")


# -------------------------------------------------------------- corrupt and inconsistent files


def _edit_config(path: Path, fn) -> None:
    cfg = json.loads((path / "config.json").read_text())
    fn(cfg)
    (path / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize(
    "damage, match, file",
    [
        (lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:100]),
         "truncated or corrupt", "model.safetensors"),
        (lambda d: (d / "model.safetensors").write_bytes(b"\x00garbage" * 10), "truncated or corrupt",
         "model.safetensors"),
        (lambda d: (d / "model.safetensors").unlink(), "missing", "model.safetensors"),
        (lambda d: (d / "config.json").write_text("{not json"), "not valid JSON", "config.json"),
        (lambda d: _edit_config(d, lambda c: c["config"].pop("beta2")), r"missing field\(s\) \['beta2'\]",
         "config.json"),
        (lambda d: _edit_config(d, lambda c: c.pop("format_version")), "missing field 'format_version'",
         "config.json"),
        (lambda d: _edit_config(d, lambda c: c.update(format_version=99)), "newer.*upgrade learned-optim",
         "config.json"),
        (lambda d: _edit_config(d, lambda c: c.update(architecture="MLP")), "architecture", "config.json"),
        (lambda d: _edit_config(d, lambda c: c["config"].update(hidden_size=8)), "shape", "model.safetensors"),
        (lambda d: _edit_config(d, lambda c: c["config"].update(beta1=1.5)), "beta1", "config.json"),
    ],
    ids=["truncated", "garbage", "no-weights", "bad-json", "missing-field", "no-version", "future-version",
         "architecture", "wrong-shape", "bad-constant"],
)
def test_bad_files_are_clear_errors_naming_the_file(tmp_path, random_net, damage, match, file):
    save_pretrained(random_net, tmp_path)
    damage(tmp_path)
    with pytest.raises(WeightsError, match=match) as info:
        from_pretrained(tmp_path)
    assert str(tmp_path / file) in str(info.value)


@pytest.mark.parametrize("kind", ["nan", "extra", "missing"])
def test_bad_tensors_are_clear_errors(tmp_path, random_net, kind):
    from safetensors.torch import load_file, save_file

    save_pretrained(random_net, tmp_path)
    tensors = load_file(str(tmp_path / "model.safetensors"))
    if kind == "nan":
        tensors["bias"][0] = float("nan")
    elif kind == "extra":
        tensors["surprise"] = torch.zeros(1)
    else:
        del tensors["head_bias"]
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(WeightsError, match={"nan": "non-finite", "extra": "unexpected", "missing": "missing"}[kind]):
        from_pretrained(tmp_path)


def test_save_refuses_nonfinite(tmp_path, random_net):
    with torch.no_grad():
        random_net.bias[0] = float("inf")
    with pytest.raises(ValueError, match="non-finite"):
        save_pretrained(random_net, tmp_path)
    assert not (tmp_path / "model.safetensors").exists()


def test_loading_never_unpickles(tmp_path, random_net, monkeypatch):
    save_pretrained(random_net, tmp_path)

    def forbidden(*a, **k):
        raise AssertionError("weights must never be unpickled")

    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    assert _same(from_pretrained(tmp_path), random_net)


def test_push_to_hub_with_mocked_api(monkeypatch, random_net):
    import huggingface_hub

    seen = {}

    class FakeApi:
        def __init__(self, token=None):
            seen["token"] = token

        def create_repo(self, repo_id, **kw):
            seen["create"] = (repo_id, kw)

        def upload_folder(self, repo_id, folder_path, commit_message, repo_type):
            seen["files"] = sorted(os.listdir(folder_path))
            seen["net"] = from_pretrained(folder_path)
            return type("Info", (), {"commit_url": f"https://hub.example/{repo_id}/commit/1"})()

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    url = push_to_hub(random_net, "acme/new", token="t0k", private=True, model_card="# hi")
    assert url.endswith("acme/new/commit/1")
    assert seen["token"] == "t0k" and seen["create"][0] == "acme/new" and seen["create"][1]["private"]
    assert seen["files"] == ["README.md", "config.json", "model.safetensors"]
    assert _same(seen["net"], random_net)
    with pytest.raises(ValueError, match="org/name"):
        random_net.push_to_hub("not a repo id")


def test_installed_package_carries_shipped_weights(tmp_path):
    """From outside the checkout, the installed package must find its own pretrained/ (the wheel
    carries it as package data). Skipped when the package is not installed non-editable."""
    code = "import learned_optim, learned_optim.hub as h; print(learned_optim.__file__); print(h.shipped_dir()); " \
           "print(h.from_pretrained(None).config.hidden_size); " \
           "print((h.shipped_dir() / 'lstm-fewshot-digits-init' / 'few_shot_init.safetensors').is_file())"
    out = subprocess.run([sys.executable, "-I", "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    if out.returncode != 0 or "site-packages" not in out.stdout.splitlines()[0]:
        pytest.skip("learned_optim is not installed as a wheel in this environment")
    lines = out.stdout.splitlines()
    assert Path(lines[1]).is_relative_to(Path(lines[0]).parent), lines
    assert int(lines[2]) >= 1
    assert lines[3] == "True", "the wheel must carry the few-shot learned init next to its weights"


def test_public_api():
    for name in learned_optim.__all__:
        assert hasattr(learned_optim, name), name
