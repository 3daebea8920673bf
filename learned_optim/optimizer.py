"""``LearnedOptimizer``: a drop-in ``torch.optim.Optimizer`` driven by a coordinatewise LSTM.

``step()`` only gathers tensors and creates state lazily; the maths is the pure function in
``learned_optim.update`` (the split torch/optim/adam.py makes).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from collections import OrderedDict
from typing import Any, Callable, Iterable

import torch
from torch.distributed.tensor import DTensor, Shard
from torch.optim import Optimizer

from .hub import DEFAULT_WEIGHTS, from_pretrained
from .kernels.rule import compute_dtype
from .network import WEIGHT_NAMES, CoordinatewiseLSTM
from .update import (
    IMPLS,
    LEGACY_IMPLS,
    DeferredSkips,
    Sharding,
    all_ranks_min,
    check_chunk_size,
    finite_flags_and_norms,
    finite_flags_on_device,
    learned_update,
    skips_on_device,
    warn_skipped,
)

__all__ = ["LearnedOptimizer"]

# Keys of optimizer.state[p] other than "step": tensors kept in the state dtype.
_STATE_TENSORS = ("exp_avg", "exp_avg_sq", "lstm_h", "lstm_c")
# The top-level key of state_dict() with the weights' identity (torch's load_state_dict reads only
# "state" and "param_groups", so other optimizers and torch.distributed.checkpoint ignore it).
WEIGHTS_KEY = "learned_optim_weights"
# What __getstate__ keeps beyond torch's defaults/state/param_groups (pickle, copy.deepcopy).
_PICKLED = ("network", "impl", "chunk_size", "state_dtype", "_weights_name")


def _check_number(name: str, value: Any, *, hint: str, upper: float | None = None) -> float:
    if isinstance(value, torch.Tensor) and not value.requires_grad:
        if value.numel() != 1:
            raise ValueError(f"Tensor {name} must be 1-element, got shape {list(value.shape)}; {hint}")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float, got {type(value).__name__} {value!r}; {hint}")
    if not math.isfinite(value) or value < 0 or (upper is not None and value >= upper):
        rng = ">= 0" if upper is None else f"in [0, {upper:g})"
        raise ValueError(f"{name} must be a finite float {rng}, got {value!r}; {hint}")
    return float(value)


def _check_betas(value: Any, trained: tuple[float, float]) -> tuple[float, float]:
    hint = f"pass e.g. betas={trained} (the values the weights were trained with)"
    if isinstance(value, (str, bytes)) or not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ValueError(f"betas must be a pair (beta1, beta2) of floats in [0, 1), got {value!r}; {hint}")
    return (_check_number("betas[0]", value[0], hint=hint, upper=1.0),
            _check_number("betas[1]", value[1], hint=hint, upper=1.0))


def _weights_identity(network: CoordinatewiseLSTM, name: str | None) -> dict[str, Any]:
    """``{"name", "sha256"}``: the name the weights were loaded by (None for an instance) and a
    hash of their config and four tensors (dtype, shape, bytes)."""
    h = hashlib.sha256(json.dumps(network.config.to_dict(), sort_keys=True).encode())
    for key in WEIGHT_NAMES:
        t = getattr(network, key).detach().cpu().contiguous()
        h.update(f"{key}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return {"name": name, "sha256": h.hexdigest()}


def _describe_weights(ident: Any) -> str:
    if not isinstance(ident, dict):
        return repr(ident)
    name = f"{ident.get('name')!r}" if ident.get("name") else "(unnamed)"
    return f"{name} sha256 {str(ident.get('sha256'))[:16]}"


def _local(t: torch.Tensor) -> torch.Tensor:
    """The rank-local shard of a DTensor (FSDP2 parameters, their grads and state), else ``t``.

    The rule is coordinatewise, so each rank updates its own shard and never needs another
    rank's coordinates: no all-gather of parameters or state.
    """
    return t._local_tensor if isinstance(t, DTensor) else t


def _zeros_like_param(p: torch.Tensor, leading: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """Contiguous zeros of shape ``(*leading, *p.shape)``. For a DTensor parameter, a DTensor
    sharded like ``p`` (shard dims shifted past ``leading``), so ``torch.distributed.checkpoint``
    saves and loads the state shard by shard."""
    if not isinstance(p, DTensor):
        return torch.zeros((*leading, *p.shape), dtype=dtype, device=p.device)
    local = torch.zeros((*leading, *p._local_tensor.shape), dtype=dtype, device=p._local_tensor.device)
    placements = [Shard(pl.dim + len(leading)) if isinstance(pl, Shard) else pl for pl in p.placements]
    shape = torch.Size((*leading, *p.shape))
    return DTensor.from_local(local, p.device_mesh, placements, run_check=False, shape=shape,
                              stride=torch.empty(shape, device="meta").stride())


def _state_dtype(p: torch.Tensor) -> torch.dtype:
    # fp32 state for fp32/bf16/fp16 params (low-precision state would lose the moments), fp64
    # for fp64 params.
    return compute_dtype(p.dtype)


class LearnedOptimizer(Optimizer):
    r"""A learned optimizer: Adam's moments fed to one tiny LSTM shared by every coordinate.

    For each coordinate of each parameter, at step :math:`t` with gradient :math:`g_t`
    (negated if ``maximize``), learning rate :math:`\eta` and weight decay :math:`\lambda`:

    .. math::
        m_t &= \beta_1 m_{t-1} + (1-\beta_1) g_t, \qquad
        v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2 \\
        d_t &= \sqrt{v_t/(1-\beta_2^t)} + \epsilon, \qquad
        a_t = \frac{m_t/(1-\beta_1^t)}{d_t} \quad \text{(the Adam direction)} \\
        x_t &= \operatorname{clip}\big([\,g_t/d_t,\; a_t\,], -C, C\big) \\
        (h_t, c_t) &= \operatorname{LSTMCell}_\theta\big(x_t, (h_{t-1}, c_{t-1})\big), \qquad
        y_t = W_y h_t + b_y \in \mathbb{R}^2 \\
        u_t &= \begin{cases} 0 & v_t = 0 \\
               a_t \exp\!\big(s \tanh y_{t,0}\big) + r \tanh y_{t,1} & \text{otherwise} \end{cases} \\
        p_t &= p_{t-1} (1 - \eta\lambda) - \eta\, u_t

    :math:`\theta, W_y, b_y` are the meta-parameters (a ``CoordinatewiseLSTM``, loaded from
    ``weights``); :math:`\epsilon, C, s, r` and the hidden size come from its ``config.json``, and
    :math:`\beta_1, \beta_2` from the param group's ``betas`` (default: the config's). A coordinate
    whose gradient has been exactly zero at every step so far (:math:`v_t = 0`) does not move, apart
    from weight decay (e.g. an ``nn.Embedding`` padding row), as with Adam. The step is unit-scale
    (:math:`|u_t| \lesssim e^{s}|a_t| + r`), so ``lr`` means what it means for Adam and every
    ``torch.optim.lr_scheduler`` works unchanged. With a
    zero output head (:math:`W_y = b_y = 0`), :math:`u_t = a_t` and the rule is exactly AdamW.
    Format version 2 weights may add sign equivariance, per-tensor context inputs and the cautious
    mask (``learned_optim.update``; the default has all three): with the mask,
    :math:`u_t \leftarrow \kappa u_t` where :math:`\mathrm{sign}(m_t)\,\mathrm{sign}(g_t) > 0` and
    :math:`u_t \leftarrow 0` elsewhere (:math:`\kappa` = ``cautious_scale``, times
    :math:`n / (k + 1)` per tensor with ``cautious_rescale``: :math:`n` its size, :math:`k` the
    coordinates kept), so a coordinate whose gradient is exactly zero this step does not move.

    All coordinates of all parameters of a group (per device and dtype) go through the LSTM in
    one batched pass, in cache-sized chunks; there is no per-parameter network call.

    State, per parameter ``p`` in ``optimizer.state[p]`` (``S`` = fp64 for fp64 params, else fp32):
        ``step``:       ``[]`` float32 (CPU), the number of updates applied to ``p``
        ``exp_avg``:    ``p.shape``, S, first moment :math:`m_t`
        ``exp_avg_sq``: ``p.shape``, S, second moment :math:`v_t`
        ``lstm_h``:     ``[H, *p.shape]``, S, LSTM hidden state, in [-1, 1] (it is o tanh(c); the
                        fast CPU loop reads it clamped to that range)
        ``lstm_c``:     ``[H, *p.shape]``, S, LSTM cell state
    i.e. ``(2 + 2H) * 4`` bytes per parameter in fp32: 40 B for the default H = 4.

    Args:
        params: iterable of parameters or of dicts defining param groups (as torch.optim).
        weights: the meta-parameters. ``None`` (default) loads the shipped default
            (``learned_optim.hub.DEFAULT_WEIGHTS``); otherwise a shipped name
            (``learned_optim.list_shipped()``), a local directory with ``config.json`` and
            ``model.safetensors``, a Hugging Face Hub repo id ``"org/name"``, or a
            ``CoordinatewiseLSTM`` instance (used as is; its weights are read at every step).
        lr (float): the step scale, as for Adam. Default ``1e-3``: Adam's default (Kingma & Ba,
            2015; ``torch.optim.Adam``), which the untrained rule (exactly Adam) inherits, and the
            inner lr at which the shipped default weights were meta-trained (the rule learned its
            own step multiplier relative to it), so use 1e-3 unless you have tuned it.
        weight_decay (float): decoupled (AdamW-style) weight decay :math:`\lambda`. Default ``0``.
        betas (tuple[float, float]): :math:`(\beta_1, \beta_2)`, the decays of the moments,
            each in [0, 1). Default ``None``: the values the weights were trained with
            (``config.beta1, config.beta2``; 0.9, 0.999 for every shipped weights). A per-group
            hyperparameter like Adam's, so ``OneCycleLR`` and ``CyclicLR`` with their default
            ``cycle_momentum=True`` cycle :math:`\beta_1`. The LSTM's inputs are built from the
            moments, so betas far from the trained values move them off the distribution the rule
            was trained on; its behaviour there is untested.
        maximize (bool, keyword-only): maximize the objective instead. Default ``False``.
        revision (str, keyword-only): branch, tag or commit of a Hub repo id. Default ``None``.
        impl (str, keyword-only): ``"auto"`` (default: the device's fused kernel where it applies,
            else the eager loop), ``"fused"`` (the fused kernel only: the C loop on CPU, Triton on
            CUDA), ``"eager"`` (the batched torch chunk loop only) or ``"reference"`` (one tensor
            at a time; for testing). See ``learned_optim.update``; the earlier names ``"torch"``
            and ``"triton"`` still work, with a ``FutureWarning``.
        chunk_size (int, keyword-only): coordinates per chunk of the eager loop. Default ``None``:
            8192 on CPU (cache-sized), 2^20 on other devices, where each chunk costs ~30 kernel
            launches (``learned_optim.kernels.eager.default_chunk_size``).
        state_dtype (keyword-only): dtype of the LSTM state ``lstm_h``/``lstm_c``: ``None``
            (default: S above) or ``torch.float32``, or ``torch.bfloat16`` to halve its memory
            (maths stays fp32; one rounding per step). The moments stay in S: a bf16 ``exp_avg_sq``
            stalls (its (1-beta2)=1e-3 relative updates fall below half a bf16 ulp; with g^2 = 1
            for 20000 steps it stops at 0.25 instead of 1.0, measured).

    Non-finite gradients: a parameter whose gradient has a NaN or inf is left untouched for that
    step (value and state), with one ``RuntimeWarning`` per step that skips any. On CUDA with the
    Triton kernel the check runs on the device and ``step()`` never waits for it: the warning (and
    the step count of a skipped parameter, counted on the host) follow at a later ``step()`` once
    the device has finished that step, or at ``state_dict()``, which waits for it.

    ``state_dict()`` also records the weights' identity (a content hash, and their name when loaded
    by name) under ``"learned_optim_weights"``; ``load_state_dict`` warns when the state was made
    with other weights and checks every state tensor's shape and dtype before loading any.

    References:
        Andrychowicz et al., "Learning to learn by gradient descent by gradient descent", 2016.
        Lv et al., "Learning Gradient Descent: Better Generalization and Longer Horizons"
        (RNNprop), 2017. Loshchilov & Hutter, "Decoupled Weight Decay Regularization", 2019.

    Example:
        >>> import torch
        >>> from learned_optim import LearnedOptimizer
        >>> model = torch.nn.Linear(4, 1)
        >>> opt = LearnedOptimizer(model.parameters(), lr=1e-2)
        >>> x, y = torch.randn(64, 4), torch.randn(64, 1)
        >>> for _ in range(5):
        ...     opt.zero_grad()
        ...     loss = torch.nn.functional.mse_loss(model(x), y)
        ...     loss.backward()
        ...     opt.step()
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        weights: str | os.PathLike | CoordinatewiseLSTM | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        betas: tuple[float, float] | None = None,
        *,
        maximize: bool = False,
        revision: str | None = None,
        impl: str = "auto",
        chunk_size: int | None = None,
        state_dtype: torch.dtype | None = None,
    ) -> None:
        lr = _check_number("lr", lr, hint="pass e.g. lr=1e-3")
        weight_decay = _check_number("weight_decay", weight_decay, hint="pass e.g. weight_decay=0.01 or 0.0")
        if not isinstance(maximize, bool):
            raise TypeError(f"maximize must be a bool, got {maximize!r}")
        if impl not in IMPLS and impl not in LEGACY_IMPLS:
            raise ValueError(f"LearnedOptimizer(impl=...) must be one of {IMPLS}, got impl={impl!r}")
        if impl in LEGACY_IMPLS:
            warnings.warn(f"LearnedOptimizer: impl={impl!r} is deprecated, use impl={LEGACY_IMPLS[impl]!r} "
                          f"(see the learned_optim.update docstring)", FutureWarning, stacklevel=2)
        check_chunk_size(chunk_size)
        if state_dtype not in (None, torch.float32, torch.bfloat16):
            raise ValueError(f"state_dtype must be None, torch.float32 or torch.bfloat16, got {state_dtype!r}")
        if isinstance(weights, CoordinatewiseLSTM):
            network = weights
        elif isinstance(weights, torch.nn.Module):
            raise TypeError(
                f"weights must be a CoordinatewiseLSTM, a name, a directory or a Hub repo id, "
                f"got a {type(weights).__name__}"
            )
        else:
            network = from_pretrained(weights, revision=revision)
        trained = (network.config.beta1, network.config.beta2)
        betas = trained if betas is None else _check_betas(betas, trained)
        # The meta-parameters are not optimized by this optimizer (set before super().__init__,
        # which calls add_param_group and checks against them).
        self.network = network
        self.impl = impl
        self.chunk_size = chunk_size
        self.state_dtype = state_dtype
        self._weights_name = None if isinstance(weights, CoordinatewiseLSTM) else str(weights or DEFAULT_WEIGHTS)
        self._init_runtime()
        defaults = dict(lr=lr, weight_decay=weight_decay, betas=betas, maximize=maximize)
        super().__init__(params, defaults)

    def _init_runtime(self) -> None:
        self._skips = DeferredSkips()  # device-side non-finite checks not read on the host yet
        self._identity: tuple | None = None  # (tensor versions, identity dict) cache

    def __getstate__(self) -> dict[str, Any]:
        # torch keeps only defaults, state and param_groups; a copy must also have its network,
        # impl, chunk size and state dtype to step (pickle and copy.deepcopy both come here).
        self._skips.settle(block=True)
        state = super().__getstate__()
        state.update({k: self.__dict__[k] for k in _PICKLED if k in self.__dict__})
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("state_dtype", None)
        self.__dict__.setdefault("_weights_name", None)
        if "_skips" not in self.__dict__:
            self._init_runtime()
        cfg = self.network.config if "network" in self.__dict__ else None
        for group in self.param_groups:
            group.setdefault("maximize", False)
            if cfg is not None:
                group.setdefault("betas", (cfg.beta1, cfg.beta2))

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        for key, hint in (("lr", "pass e.g. lr=1e-3"), ("weight_decay", "pass e.g. weight_decay=0.0")):
            if key in param_group:
                param_group[key] = _check_number(key, param_group[key], hint=hint)
        if param_group.get("betas") is not None:
            param_group["betas"] = _check_betas(param_group["betas"], self.defaults["betas"])
        else:
            param_group.pop("betas", None)
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        meta = {id(t) for t in self.network.parameters()}
        for i, p in enumerate(group["params"]):
            if p.is_complex():
                raise ValueError(
                    f"{self._describe(len(self.param_groups) - 1, i, p)} is complex ({p.dtype}); "
                    f"LearnedOptimizer supports real floating-point parameters only: optimize "
                    f"torch.view_as_real(p) as a real parameter instead"
                )
            if not p.is_floating_point():
                raise ValueError(f"{self._describe(len(self.param_groups) - 1, i, p)} has dtype {p.dtype}; "
                                 f"only floating-point parameters can be optimized")
            if id(p) in meta:
                raise ValueError(
                    "the learned optimizer's own network weights were passed as parameters to "
                    "optimize; they are meta-parameters: train them with learned_optim.meta"
                )

    def _describe(self, gi: int, pi: int, p: torch.Tensor) -> str:
        names = self.param_groups[gi].get("param_names") if gi < len(self.param_groups) else None
        label = f"parameter {names[pi]!r} (position {pi} of param group {gi}, " if names else \
            f"parameter {pi} of param group {gi} ("
        return f"{label}shape {list(p.shape)})"

    def _init_state(self, p: torch.Tensor) -> dict[str, Any]:
        state = self.state[p]
        if len(state) == 0:
            hs = self.network.config.hidden_size
            sdt = _state_dtype(p)
            state["step"] = torch.tensor(0.0)  # [] float32 on CPU, as torch.optim.Adam
            state["exp_avg"] = _zeros_like_param(p, (), sdt)
            state["exp_avg_sq"] = _zeros_like_param(p, (), sdt)
            state["lstm_h"] = _zeros_like_param(p, (hs,), self._key_dtype(p, "lstm_h"))
            state["lstm_c"] = _zeros_like_param(p, (hs,), self._key_dtype(p, "lstm_c"))
        return state

    def _key_dtype(self, p: torch.Tensor, key: str) -> torch.dtype:
        # state_dtype applies to the LSTM state only (see the class docstring).
        if key in ("lstm_h", "lstm_c") and self.state_dtype is not None:
            return self.state_dtype
        return _state_dtype(p)

    def _hparams(self, group: dict[str, Any]) -> dict[str, Any]:
        # Schedulers and users write these into the group between steps: checked at each step.
        return dict(lr=_check_number("lr", group["lr"], hint="set param_groups[i]['lr'] to e.g. 1e-3"),
                    weight_decay=_check_number("weight_decay", group["weight_decay"],
                                               hint="set param_groups[i]['weight_decay'] to e.g. 0.0"),
                    betas=_check_betas(group["betas"], self.defaults["betas"]), maximize=group["maximize"])

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None):
        """Perform one optimization step. ``closure`` re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._skips.settle(block=False)
        skipped, deferred = 0, []
        # the model size the size context features see: every parameter of every
        # group, whether or not it has a gradient this step (DTensor.numel() is the global size);
        # counted only for rules that read it (a Python loop over the tensors, at every step)
        num_params = (sum(p.numel() for group in self.param_groups for p in group["params"])
                      if self.network.config.reads_model_size else None)
        for gi, group in enumerate(self.param_groups):
            # (device, compute dtype, id of the DTensor mesh) -> (mesh, the 7 tensor lists, and for
            # DTensors each one's global shape and sharded mesh dims: the per-tensor context is of
            # the whole tensor)
            buckets: dict[tuple, tuple[Any, list[list], list]] = {}
            for pi, p in enumerate(group["params"]):
                if p.grad is None:
                    continue
                g = p.grad
                if g.is_sparse:
                    raise RuntimeError(
                        f"{self._describe(gi, pi, p)} has a sparse gradient; LearnedOptimizer "
                        f"needs dense gradients: use nn.Embedding(..., sparse=False) (the default)"
                    )
                state = self._init_state(p)
                mesh = p.device_mesh if isinstance(p, DTensor) else None
                key = (p.device, compute_dtype(p.dtype), id(mesh))
                _, lists, shards = buckets.setdefault(key, (mesh, [[] for _ in range(7)], []))
                row = (p, g, state["exp_avg"], state["exp_avg_sq"], state["lstm_h"], state["lstm_c"], state["step"])
                # a DTensor parameter's grad and state are DTensors too: their local shards (the
                # check once per parameter, not per tensor: this loop runs over every tensor at every step)
                for lst, t in zip(lists, row if mesh is None else map(_local, row)):
                    lst.append(t)
                if mesh is not None:
                    shards.append((tuple(p.shape), tuple(i for i, pl in enumerate(p.placements)
                                                         if isinstance(pl, Shard))))
            hp = self._hparams(group) if buckets else {}
            for (device, _, _), (mesh, lists, shards) in buckets.items():
                sharding = None
                if mesh is not None and self.network.config.context_features:
                    sharding = Sharding([sh for sh, _ in shards], [d for _, d in shards], mesh)
                kw = dict(weights=self.network, config=self.network.config, impl=self.impl,
                          chunk_size=self.chunk_size, num_params=num_params, sharding=sharding, **hp)
                if skips_on_device(self.impl, device):
                    # The Triton kernel takes the flags on the device: nothing here waits for it.
                    ok = all_ranks_min(finite_flags_on_device(lists[1]).to(torch.int32), mesh)
                    learned_update(*lists, finite=ok, **kw)
                    deferred.append((ok, lists[6]))
                else:
                    # The CPU loops read the flags on the host: there is no launch queue to stall,
                    # and the host check (an L2 norm, rechecked exactly where it is not finite) is
                    # cheaper on CPU than the fp64-accumulated one the device path needs.
                    lists, n_bad, keep, norms = self._drop_nonfinite(lists, mesh)
                    skipped += n_bad
                    if n_bad and sharding is not None:
                        kw["sharding"] = sharding.select(keep)
                    learned_update(*lists, grad_norms=norms, **kw)
        self._skips.record(deferred)
        if skipped:
            warn_skipped(skipped, "")
        return loss

    @staticmethod
    def _drop_nonfinite(lists: list[list], mesh=None) -> tuple[list[list], int, list[bool], list[torch.Tensor]]:
        # the check's gradient norms go on to the context inputs that read them (one pass, not two)
        flags, norms = finite_flags_and_norms(lists[1])
        ok = all_ranks_min(flags.to(torch.int32), mesh)
        finite = ok.bool().tolist()
        n_bad = finite.count(False)
        if n_bad:
            lists = [[t for t, ok in zip(lst, finite) if ok] for lst in lists]
            norms = [n for n, ok in zip(norms, finite) if ok]
        return lists, n_bad, finite, norms

    def weights_identity(self) -> dict[str, Any]:
        """``{"name": ..., "sha256": ...}`` of the weights in use (what ``state_dict()`` records)."""
        versions = tuple((id(t), t._version) for t in self.network.parameters())
        if self._identity is None or self._identity[0] != versions:
            self._identity = (versions, _weights_identity(self.network, self._weights_name))
        return dict(self._identity[1])

    def state_dict(self) -> dict[str, Any]:
        """torch's ``state_dict()`` plus ``"learned_optim_weights"``: the weights' identity.

        Waits for pending device-side non-finite checks first, so saved step counts are exact."""
        self._skips.settle(block=True)
        sd = super().state_dict()
        sd[WEIGHTS_KEY] = self.weights_identity()
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a ``state_dict()``; state tensors keep their dtype (fp32 for low-precision params).

        Order: the load-state-dict pre-hooks run on a shallow copy (their returned dict is what
        is loaded); a state made with other weights (``"learned_optim_weights"``) gives a
        ``UserWarning`` naming both; every state tensor's shape and dtype is checked (a
        ``ValueError`` naming the parameter, before anything is loaded); torch's
        ``load_state_dict`` matches saved ids to parameters, casting state to each parameter's
        dtype; then the state tensors are restored from the hook-processed dict in their own dtype
        (a bf16 parameter's fp32 moments are not rounded to bf16); then the post-hooks run.
        """
        self._skips.settle(block=True)
        state_dict = state_dict.copy()
        for hook in self._optimizer_load_state_dict_pre_hooks.values():
            result = hook(self, state_dict)
            if result is not None:
                state_dict = result
        saved = state_dict.get(WEIGHTS_KEY)
        mine = self.weights_identity()
        if saved is not None and (not isinstance(saved, dict) or saved.get("sha256") != mine["sha256"]):
            warnings.warn(f"LearnedOptimizer.load_state_dict: the state was made with weights "
                          f"{_describe_weights(saved)}, this optimizer uses {_describe_weights(mine)}; "
                          f"the LSTM state (lstm_h, lstm_c) is tied to the weights that made it", UserWarning,
                          stacklevel=2)
        id_map = self._id_map(state_dict)
        for pid, st in state_dict.get("state", {}).items():
            if pid in id_map:
                self._check_saved(*id_map[pid], st)
        pre, post = self._optimizer_load_state_dict_pre_hooks, self._optimizer_load_state_dict_post_hooks
        self._optimizer_load_state_dict_pre_hooks = OrderedDict()
        self._optimizer_load_state_dict_post_hooks = OrderedDict()
        try:
            super().load_state_dict(state_dict)
        finally:
            self._optimizer_load_state_dict_pre_hooks, self._optimizer_load_state_dict_post_hooks = pre, post
        for pid, st in state_dict["state"].items():
            if pid not in id_map:
                continue
            p = id_map[pid][2]
            for key in _STATE_TENSORS:
                if isinstance(st.get(key), torch.Tensor):
                    self.state[p][key] = st[key].to(device=p.device, dtype=self._key_dtype(p, key), copy=True)
            if "step" in st:
                self.state[p]["step"] = torch.as_tensor(st["step"], dtype=torch.float32).clone()
        for hook in post.values():
            hook(self)

    def _id_map(self, state_dict: dict[str, Any]) -> dict[Any, tuple[int, int, torch.Tensor]]:
        """Saved parameter id -> (group index, position, parameter); empty when the groups do not
        match (torch's load_state_dict then raises its own error)."""
        saved = state_dict.get("param_groups", [])
        if len(saved) != len(self.param_groups) or any(
                len(s["params"]) != len(g["params"]) for s, g in zip(saved, self.param_groups)):
            return {}
        return {pid: (gi, pi, p) for gi, (s, g) in enumerate(zip(saved, self.param_groups))
                for pi, (pid, p) in enumerate(zip(s["params"], g["params"]))}

    def _check_saved(self, gi: int, pi: int, p: torch.Tensor, st: dict[str, Any]) -> None:
        if not st:
            return
        hs = self.network.config.hidden_size
        want = {"exp_avg": tuple(p.shape), "exp_avg_sq": tuple(p.shape), "lstm_h": (hs, *p.shape),
                "lstm_c": (hs, *p.shape)}
        for key, shape in want.items():
            t = st.get(key)
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else None
            if got != shape or not t.is_floating_point():
                what = (f"shape {got}" if got != shape else f"dtype {t.dtype}") if t is not None else "no tensor"
                raise ValueError(
                    f"LearnedOptimizer.load_state_dict: state {key!r} of {self._describe(gi, pi, p)} "
                    f"has {what}, expected a floating-point tensor of "
                    f"shape {shape} (hidden_size {hs} of these weights): the state was saved for another "
                    f"model or with other weights; load the matching state_dict or start fresh")

