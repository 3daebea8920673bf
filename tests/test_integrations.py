"""The README's framework snippets, executed as written, on tiny models (CPU, no downloads).

Each test extracts the snippet that follows ``<!-- snippet: NAME -->`` in README.md, runs it with
the few names it expects from the surrounding text (``output_dir``, ``train_dataset`` /
``train_loader``), then checks what a user relies on: the loss falls, the lr set by the user is
the optimizer's, and resuming from the framework's checkpoint gives the parameters of an
uninterrupted run bit for bit.
"""

from __future__ import annotations

import inspect
import logging
import re
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from learned_optim import LearnedOptimizer
from learned_optim.integrations import register_timm, trainer_optimizer

README = Path(__file__).resolve().parents[1] / "README.md"


def snippet(name: str) -> str:
    text = README.read_text(encoding="utf-8")
    m = re.search(rf"<!-- snippet: {re.escape(name)} -->\n```python\n(.*?)```", text, re.S)
    assert m, f"README.md has no python block after <!-- snippet: {name} -->"
    return m.group(1)


def run_snippet(name: str, **names) -> dict:
    ns = dict(names)
    exec(compile(snippet(name), f"README.md:{name}", "exec"), ns)
    return ns


def _digits_loader(seed: int = 0, batch_size: int = 64, shuffle: bool = True):
    from learned_optim.common.data import digits

    x, y = digits()
    ds = torch.utils.data.TensorDataset(x[:512], y[:512])
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=shuffle,
                                       generator=torch.Generator().manual_seed(seed))


def _params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_same_params(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resume"


# ---------------------------------------------------------------------------------------- helpers

def test_trainer_optimizer_takes_lr_from_args():
    cls, kw = trainer_optimizer(SimpleNamespace(learning_rate=3e-4), impl="reference")
    assert cls is LearnedOptimizer and kw == {"lr": 3e-4, "impl": "reference"}
    with pytest.raises(ValueError, match="learning_rate"):
        trainer_optimizer(SimpleNamespace(learning_rate=1e-3), lr=1e-2)
    with pytest.raises(TypeError, match="TrainingArguments"):
        trainer_optimizer(object())
    with pytest.raises(ValueError, match="> 0"):
        trainer_optimizer(SimpleNamespace(learning_rate=0.0))


@pytest.mark.parametrize("bad", ["learned_optim", "Learned", "", "1x", 3])
def test_register_timm_refuses_names_timm_cannot_parse(bad):
    with pytest.raises(ValueError, match="name must be"):
        register_timm(bad)


# ----------------------------------------------------------------------------- Hugging Face Trainer

class _Bytes(torch.utils.data.Dataset):
    """Byte-level LM examples from a stdlib module's source (no download)."""

    def __init__(self, block: int = 32):
        self.data = torch.tensor(list(inspect.getsource(inspect).encode()[:40000]), dtype=torch.long)
        self.block = block

    def __len__(self):
        return (len(self.data) - 1) // self.block

    def __getitem__(self, i):
        x = self.data[i * self.block:(i + 1) * self.block]
        return {"input_ids": x, "labels": x}


def test_hf_trainer_snippet(tmp_path):
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    torch.manual_seed(0)
    ns = run_snippet("hf-trainer", output_dir=str(tmp_path / "run"), train_dataset=_Bytes())
    trainer = ns["trainer"]
    assert isinstance(trainer.optimizer.optimizer, LearnedOptimizer)  # inside accelerate's wrapper
    assert trainer.optimizer.param_groups[0]["initial_lr"] == ns["args"].learning_rate == 1e-3
    # The loss falls: the trained model against the same architecture at the same initial seed.
    torch.manual_seed(0)
    initial = type(ns["model"])(ns["model"].config)
    batch = torch.stack([_Bytes()[i]["input_ids"] for i in range(64)])
    with torch.no_grad():
        before = float(initial(input_ids=batch, labels=batch).loss)
        after = float(ns["model"](input_ids=batch, labels=batch).loss)
    assert after < before - 0.5, (before, after)
    uninterrupted = _params(ns["model"])

    # Same script, resumed from the step-10 checkpoint: the remaining 10 steps are replayed exactly.
    source = snippet("hf-trainer").replace(
        "trainer.train()", f"trainer.train(resume_from_checkpoint={str(tmp_path / 'run' / 'checkpoint-10')!r})")
    torch.manual_seed(123)  # a different fresh init: everything must come from the checkpoint
    resumed = {"output_dir": str(tmp_path / "run"), "train_dataset": _Bytes()}
    exec(compile(source, "README.md:hf-trainer (resumed)", "exec"), resumed)
    assert resumed["trainer"].state.global_step == 20
    _assert_same_params(uninterrupted, _params(resumed["model"]))


# ------------------------------------------------------------------------------- PyTorch Lightning

def test_lightning_snippet(tmp_path):
    L = pytest.importorskip("lightning")
    warnings.filterwarnings("ignore", module="lightning")
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    torch.manual_seed(0)
    ns = run_snippet("lightning", output_dir=str(tmp_path / "run"), train_loader=_digits_loader())
    trainer = ns["trainer"]
    assert isinstance(trainer.optimizers[0], LearnedOptimizer)
    assert trainer.optimizers[0].param_groups[0]["lr"] == 1e-3
    assert trainer.global_step == 30

    # Loss falls: the snippet's module class, trained for 30 steps, against its initial loss.
    x, y = _digits_loader().dataset.tensors
    torch.manual_seed(0)
    module = ns["Classifier"](lr=3e-3)
    with torch.no_grad():
        before = float(torch.nn.functional.cross_entropy(module.net(x), y))
    ckpt = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=16, save_top_k=-1)

    def fit(mod, steps, ckpt_path=None, callbacks=()):
        t = L.Trainer(max_steps=steps, default_root_dir=str(tmp_path / "r"), logger=False, accelerator="cpu",
                      enable_progress_bar=False, enable_model_summary=False, callbacks=list(callbacks))
        # Unshuffled: a fresh loader replays the same batches; 8 batches an epoch, so the step-16
        # checkpoint is at an epoch boundary (Lightning resumes mid-epoch by restarting the epoch).
        t.fit(mod, _digits_loader(shuffle=False), ckpt_path=ckpt_path)
        return t

    t = fit(module, 30, callbacks=[ckpt])
    assert t.optimizers[0].param_groups[0]["lr"] == 3e-3  # the module's lr reached the optimizer
    with torch.no_grad():
        after = float(torch.nn.functional.cross_entropy(module.net(x), y))
    assert after < before, (before, after)
    uninterrupted = _params(module)

    # Resume from the step-16 checkpoint into a differently initialised module: bit-identical end.
    files = sorted((tmp_path / "ckpt").glob("*step=16*.ckpt"))
    assert files, list((tmp_path / "ckpt").iterdir())
    torch.manual_seed(99)
    fresh = ns["Classifier"](lr=3e-3)
    fit(fresh, 30, ckpt_path=str(files[0]))
    _assert_same_params(uninterrupted, _params(fresh))


# -------------------------------------------------------------------------------------- accelerate

def test_accelerate_snippet(tmp_path):
    pytest.importorskip("accelerate")
    torch.manual_seed(0)
    loader = _digits_loader()
    x, y = loader.dataset.tensors
    ns = run_snippet("accelerate", output_dir=str(tmp_path / "state"), train_loader=loader)
    model, optimizer, accelerator = ns["model"], ns["optimizer"], ns["accelerator"]
    assert optimizer.param_groups[0]["lr"] == 1e-3
    assert isinstance(optimizer.optimizer, LearnedOptimizer)  # accelerate wraps it

    batches = [(x[i:i + 64], y[i:i + 64]) for i in range(0, 256, 64)]

    def train_more():
        for xb, yb in batches:
            optimizer.zero_grad()
            accelerator.backward(torch.nn.functional.cross_entropy(model(xb), yb))
            optimizer.step()
        return _params(model)

    with torch.no_grad():
        initial = float(torch.nn.functional.cross_entropy(model(x), y))
    uninterrupted = train_more()
    with torch.no_grad():
        final = float(torch.nn.functional.cross_entropy(model(x), y))
    assert final < initial, (initial, final)

    accelerator.load_state(str(tmp_path / "state"))  # back to the end of the snippet's loop
    _assert_same_params(uninterrupted, train_more())


# -------------------------------------------------------------------------------------------- timm

def test_timm_snippet():
    pytest.importorskip("timm", reason="timm needs a torch/torchvision pair (README: 'With timm')")
    ns = run_snippet("timm")
    optimizer = ns["optimizer"]
    assert isinstance(optimizer, LearnedOptimizer)
    assert optimizer.param_groups[0]["lr"] == 1e-3
    decays = sorted({g["weight_decay"] for g in optimizer.param_groups})
    assert decays == [0.0, 0.05]  # timm's groups: no decay on biases and norms
    model = ns["model"]
    x = torch.randn(4, 1, 32, 32)
    loss = model(x).logsumexp(-1).mean()
    loss.backward()
    optimizer.step()
