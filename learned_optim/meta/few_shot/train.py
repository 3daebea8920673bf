"""Few-shot meta-training: of the learned rule and its step scale (``train_few_shot``), of any inner
optimizer's step scale and initialisation (``meta_train_inner``), and the learned init's file."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from ...common.files import atomic_write_bytes
from ...hub import from_pretrained, save_pretrained
from ...network import CoordinatewiseLSTM, LSTMOptimizerConfig
from .adapt import adapt, tune_lr
from .config import FewShotConfig
from .family import EpisodeSampler, digits_classes, init_params, mlp_size, query_loss

__all__ = ["meta_train_inner", "train_few_shot", "save_init", "load_init", "mean_last", "INIT_FILE"]

INIT_FILE = "few_shot_init.safetensors"


def mean_last(history: Sequence[float], n: int) -> float:
    """The mean of the last ``n`` entries of ``history`` (of all, if fewer; 0 if empty)."""
    return sum(history[-n:]) / max(1, len(history[-n:]))


def meta_train_inner(
    method: str,
    cfg: FewShotConfig,
    sampler: EpisodeSampler,
    d_in: int,
    *,
    lr0: float,
    network: CoordinatewiseLSTM | None = None,
    learn_rule: bool = False,
    learn_init: bool = False,
    progress: bool = True,
    desc: str = "few-shot meta-train",
) -> tuple[float, Tensor | None, list[float]]:
    """The few-shot meta-training loop, for any inner optimizer.

    Meta-parameters: the inner step scale (log lr, from ``lr0``) always; the LSTM rule's weights
    with ``learn_rule`` (``method="learned"`` only); the model's initialisation with
    ``learn_init`` (MAML-style: one flat parameter vector every episode starts from; otherwise a
    fresh PyTorch-default init per episode). Meta-gradients flow through all ``inner_steps``
    updates (full second order). ``cfg.meta_steps`` Adam steps on ``cfg.meta_batch`` episodes
    each, meta-gradient norm clipped to ``cfg.grad_clip``.

    Returns (final inner lr, the learned init or None, per-step mean query loss).
    """
    from tqdm.auto import tqdm

    if learn_rule and method != "learned":
        raise ValueError(f"learn_rule=True needs method='learned', got method={method!r}")
    log_lr = nn.Parameter(torch.tensor(math.log(lr0)))
    # this order (rule, lr, init) keeps the shipped weights reproducible: the clip's total norm
    # sums in it
    meta_params = [*network.parameters(), log_lr] if learn_rule else [log_lr]
    theta_init = None
    if learn_init:
        # starts from one draw of the default init (its own stream: the episodes are unchanged)
        theta_init = nn.Parameter(init_params(d_in, cfg.hidden, cfg.n_way, torch.Generator().manual_seed(cfg.seed + 3)))
        meta_params.append(theta_init)
    opt = torch.optim.Adam(meta_params, lr=cfg.meta_lr)
    gen = torch.Generator().manual_seed(cfg.seed + 2)
    history = []
    bar = tqdm(range(cfg.meta_steps), desc=desc, disable=not progress)
    for step in bar:
        opt.zero_grad()
        total = 0.0
        for _ in range(cfg.meta_batch):
            k = cfg.k_shots[int(torch.randint(len(cfg.k_shots), (1,), generator=gen))]
            xs, ys, xq, yq = sampler.sample(k, gen)
            fresh = init_params(d_in, cfg.hidden, cfg.n_way, gen)  # drawn either way: same episode stream
            theta0 = theta_init if learn_init else fresh
            theta, _ = adapt(method, theta0, (xs, ys), steps=cfg.inner_steps, lr=log_lr.exp(), hidden=cfg.hidden,
                             n_way=cfg.n_way, network=network, create_graph=True)
            loss = query_loss(theta, (xq, yq), cfg.hidden, cfg.n_way) / cfg.meta_batch
            if not torch.isfinite(loss):  # one exploding episode must not poison the meta-step
                continue
            loss.backward()
            total += loss.item()
        torch.nn.utils.clip_grad_norm_(meta_params, cfg.grad_clip)
        if all(p.grad is None or torch.isfinite(p.grad).all() for p in meta_params):
            opt.step()
        history.append(total)
        if step % 10 == 0:
            bar.set_postfix(query_loss=f"{mean_last(history, 10):.3f}", lr=f"{log_lr.exp().item():.3g}")
    return log_lr.detach().exp().item(), (theta_init.detach().clone() if learn_init else None), history


def save_init(theta: Tensor, directory: str | Path, cfg: FewShotConfig, d_in: int) -> Path:
    """Save a learned initialisation (flat MLP parameters) next to the weights, as safetensors."""
    from safetensors.torch import save

    path = Path(directory) / INIT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    data = save({"theta": theta.detach().float().contiguous()},
                metadata={"mlp": f"{d_in}-{cfg.hidden}-{cfg.n_way}", "layout": "w1, b1, w2, b2 flattened"})
    return atomic_write_bytes(path, data)


def load_init(directory: str | Path, cfg: FewShotConfig, d_in: int) -> Tensor:
    """The learned initialisation saved by ``save_init``; checks it fits the MLP of ``cfg``."""
    from safetensors import safe_open

    path = Path(directory) / INIT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: these weights have no learned initialisation "
                                f"(train with learn_init=True, or evaluate with init='fresh')")
    with safe_open(str(path), framework="pt") as f:
        theta = f.get_tensor("theta")
    want = mlp_size(d_in, cfg.hidden, cfg.n_way)
    if theta.dim() != 1 or theta.numel() != want or not torch.isfinite(theta).all():
        raise ValueError(f"{path}: expected a finite flat vector of {want} values for the MLP "
                         f"{d_in}-{cfg.hidden}-{cfg.n_way}, got shape {tuple(theta.shape)}")
    return theta


def train_few_shot(
    cfg: FewShotConfig,
    out: str | Path | None = None,
    *,
    data: tuple[Tensor, Tensor, Sequence[int], Sequence[int]] | None = None,
    progress: bool = True,
) -> tuple[CoordinatewiseLSTM, dict[str, Any]]:
    """Meta-train the LSTM rule (and its step scale; with ``cfg.learn_init`` also the MLP's
    initialisation, MAML-style) as a few-shot inner optimizer.

    ``data`` = (X, y, meta-training classes, held-out classes); default ``digits_classes()``.
    Held-out classes are not touched here. Saves to ``out`` (``save_pretrained`` format, with
    the config, the meta-learned ``inner_lr`` and the wall time in the provenance; the learned
    init as ``few_shot_init.safetensors``) if given. Returns (network, provenance).
    """
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    x, y, train_classes, _ = data if data is not None else digits_classes()
    sampler = EpisodeSampler(x, y, train_classes, cfg.n_way, cfg.q_query)
    if cfg.start_from is not None:
        net = from_pretrained(cfg.start_from)
    else:
        net = CoordinatewiseLSTM(LSTMOptimizerConfig(**cfg.network), seed=cfg.seed)
    # The step scale starts at the best lr of the untrained rule (= Adam) on meta-training episodes.
    lr0, _ = tune_lr("learned", sampler, cfg, cfg.k_shots[0], network=net, episodes=min(cfg.tune_episodes, 50),
                     seed=cfg.seed + 1)
    d_in = x.shape[1]
    inner_lr, theta_init, history = meta_train_inner("learned", cfg, sampler, d_in, lr0=lr0, network=net,
                                                     learn_rule=True, learn_init=cfg.learn_init, progress=progress)
    wall = time.perf_counter() - t0
    net.provenance = {
        "trained": True,
        "kind": "few-shot inner optimizer" + (" with a learned initialisation" if cfg.learn_init else ""),
        "inner_lr": inner_lr,
        "few_shot_config": cfg.to_dict(),
        "meta_train_classes": [int(c) for c in train_classes],
        "wall_time_s": round(wall, 1),
        "torch_threads": torch.get_num_threads(),
        "final_query_loss_mean_last100": mean_last(history, 100),
    }
    if cfg.learn_init:
        net.provenance["learned_init"] = INIT_FILE
    if out is not None:
        save_pretrained(net, out)
        if theta_init is not None:
            save_init(theta_init, out, cfg, d_in)
    return net, net.provenance
