"""``LearnedOptimizer``: a drop-in ``torch.optim.Optimizer`` driven by a coordinatewise LSTM.

``step()`` only gathers tensors and creates state lazily; the maths is the pure function in
``learned_optim.update`` (the split torch/optim/adam.py makes).
"""

from __future__ import annotations

import math
import os
import warnings
from itertools import chain
from typing import Any, Callable, Iterable

import torch
from torch.distributed.tensor import DTensor, Shard
from torch.optim import Optimizer

from .hub import from_pretrained
from .kernels.rule import compute_dtype
from .network import CoordinatewiseLSTM
from .update import DEFAULT_CHUNK_SIZE, IMPLS, LEGACY_IMPLS, finite_flags, learned_update

__all__ = ["LearnedOptimizer"]

# Keys of optimizer.state[p] other than "step": tensors kept in the state dtype.
_STATE_TENSORS = ("exp_avg", "exp_avg_sq", "lstm_h", "lstm_c")


def _check_number(name: str, value: Any, *, hint: str) -> float:
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.requires_grad:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float, got {type(value).__name__} {value!r}; {hint}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite float >= 0, got {value!r}; {hint}")
    return float(value)


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
        u_t &= a_t \exp\!\big(s \tanh y_{t,0}\big) + r \tanh y_{t,1} \\
        p_t &= p_{t-1} (1 - \eta\lambda) - \eta\, u_t

    :math:`\theta, W_y, b_y` are the meta-parameters (a ``CoordinatewiseLSTM``, loaded from
    ``weights``); :math:`\beta_1, \beta_2, \epsilon, C, s, r` and the hidden size come from its
    ``config.json``. The step is unit-scale (:math:`|u_t| \lesssim e^{s}|a_t| + r`), so ``lr``
    means what it means for Adam and every ``torch.optim.lr_scheduler`` works unchanged. With a
    zero output head (:math:`W_y = b_y = 0`), :math:`u_t = a_t` and the rule is exactly AdamW.

    All coordinates of all parameters of a group (per device and dtype) go through the LSTM in
    one batched pass, in cache-sized chunks; there is no per-parameter network call.

    State, per parameter ``p`` in ``optimizer.state[p]`` (``S`` = fp64 for fp64 params, else fp32):
        ``step``:       ``[]`` float32 (CPU), the number of updates applied to ``p``
        ``exp_avg``:    ``p.shape``, S, first moment :math:`m_t`
        ``exp_avg_sq``: ``p.shape``, S, second moment :math:`v_t`
        ``lstm_h``:     ``[H, *p.shape]``, S, LSTM hidden state
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
        maximize (bool, keyword-only): maximize the objective instead. Default ``False``.
        revision (str, keyword-only): branch, tag or commit of a Hub repo id. Default ``None``.
        impl (str, keyword-only): ``"auto"`` (default: the device's fused kernel where it applies,
            else the eager loop), ``"fused"`` (the fused kernel only: the C loop on CPU, Triton on
            CUDA), ``"eager"`` (the batched torch chunk loop only) or ``"reference"`` (one tensor
            at a time; for testing). See ``learned_optim.update``; the earlier names ``"torch"``
            and ``"triton"`` still work, with a ``FutureWarning``.
        chunk_size (int, keyword-only): coordinates per chunk of the eager loop. Default 8192.
        state_dtype (keyword-only): dtype of the LSTM state ``lstm_h``/``lstm_c``: ``None``
            (default: S above) or ``torch.float32``, or ``torch.bfloat16`` to halve its memory
            (maths stays fp32; one rounding per step). The moments stay in S: a bf16 ``exp_avg_sq``
            stalls (its (1-beta2)=1e-3 relative updates fall below half a bf16 ulp; with g^2 = 1
            for 20000 steps it stops at 0.25 instead of 1.0, measured).

    Non-finite gradients: a parameter whose gradient has a NaN or inf is left untouched for that
    step (value and state), with one ``RuntimeWarning`` per step that skips any.

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
        *,
        maximize: bool = False,
        revision: str | None = None,
        impl: str = "auto",
        chunk_size: int = DEFAULT_CHUNK_SIZE,
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
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}; the default is {DEFAULT_CHUNK_SIZE}")
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
        # The meta-parameters are not optimized by this optimizer (set before super().__init__,
        # which calls add_param_group and checks against them).
        self.network = network
        self.impl = impl
        self.chunk_size = chunk_size
        self.state_dtype = state_dtype
        defaults = dict(lr=lr, weight_decay=weight_decay, maximize=maximize)
        self._state_unchecked = False  # set by load_state_dict: validate that state once in step()
        super().__init__(params, defaults)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("_state_unchecked", True)
        self.__dict__.setdefault("state_dtype", None)
        for group in self.param_groups:
            group.setdefault("maximize", False)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        for key, hint in (("lr", "pass e.g. lr=1e-3"), ("weight_decay", "pass e.g. weight_decay=0.0")):
            if key in param_group:
                param_group[key] = _check_number(key, param_group[key], hint=hint)
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
                raise ValueError(f"{self._describe(len(self.param_groups) - 1, i, p)} has dtype {p.dtype}; only floating-point parameters can be optimized")
            if id(p) in meta:
                raise ValueError(
                    "the learned optimizer's own network weights were passed as parameters to "
                    "optimize; they are meta-parameters: train them with learned_optim.meta"
                )

    def _describe(self, gi: int, pi: int, p: torch.Tensor) -> str:
        names = self.param_groups[gi].get("param_names") if gi < len(self.param_groups) else None
        label = f"parameter {names[pi]!r}" if names else f"parameter {pi} of param group {gi}"
        return f"{label} (shape {list(p.shape)})"

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

    def _check_state(self, gi: int, pi: int, p: torch.Tensor, state: dict[str, Any]) -> None:
        hs = self.network.config.hidden_size
        want = {"exp_avg": tuple(p.shape), "exp_avg_sq": tuple(p.shape),
                "lstm_h": (hs, *p.shape), "lstm_c": (hs, *p.shape)}
        for key, shape in want.items():
            t = state.get(key)
            if not isinstance(t, torch.Tensor) or tuple(t.shape) != shape:
                got = None if not isinstance(t, torch.Tensor) else tuple(t.shape)
                raise ValueError(
                    f"optimizer state {key!r} of {self._describe(gi, pi, p)} has shape {got}, "
                    f"expected {shape}: was the state saved with different weights (hidden_size) "
                    f"or for a different model? Load a matching state_dict or start fresh."
                )

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None):
        """Perform one optimization step. ``closure`` re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self._state_unchecked:
            # State that came through load_state_dict is checked once, before its first use;
            # state created by _init_state has the right shapes by construction.
            for gi, group in enumerate(self.param_groups):
                for pi, p in enumerate(group["params"]):
                    if self.state.get(p):
                        self._check_state(gi, pi, p, self.state[p])
            self._state_unchecked = False
        skipped = 0
        for gi, group in enumerate(self.param_groups):
            # (device, compute dtype, id of the DTensor mesh) -> (mesh, the 7 tensor lists)
            buckets: dict[tuple, tuple[Any, list[list]]] = {}
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
                _, lists = buckets.setdefault(key, (mesh, [[] for _ in range(7)]))
                for lst, t in zip(lists, (p, g, state["exp_avg"], state["exp_avg_sq"],
                                          state["lstm_h"], state["lstm_c"], state["step"])):
                    lst.append(_local(t))
            for mesh, lists in buckets.values():
                lists, n_bad = self._drop_nonfinite(lists, mesh)
                skipped += n_bad
                learned_update(
                    *lists,
                    weights=self.network,
                    config=self.network.config,
                    lr=group["lr"],
                    weight_decay=group["weight_decay"],
                    maximize=group["maximize"],
                    impl=self.impl,
                    chunk_size=self.chunk_size,
                )
        if skipped:
            warnings.warn(
                f"LearnedOptimizer: {skipped} parameter(s) had non-finite gradients (NaN or inf); "
                f"their update was skipped this step, values and state unchanged",
                RuntimeWarning,
                stacklevel=2,
            )
        return loss

    @staticmethod
    def _drop_nonfinite(lists: list[list], mesh=None) -> tuple[list[list], int]:
        grads = lists[1]
        ok = finite_flags(grads).to(torch.int32)  # exact, one foreach L2 norm in the usual case
        if mesh is not None:
            # Sharded (FSDP2) parameters: a NaN in any rank's shard skips the whole parameter on
            # every rank, so the shards never disagree about whether a step happened. This is
            # the rule's only cross-rank statistic; one all-reduce of a flag per tensor.
            import torch.distributed as dist

            for dim in range(mesh.ndim):
                dist.all_reduce(ok, op=dist.ReduceOp.MIN, group=mesh.get_group(dim))
        finite = ok.bool().tolist()
        n_bad = finite.count(False)
        if n_bad:
            lists = [[t for t, ok in zip(lst, finite) if ok] for lst in lists]
        return lists, n_bad

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a ``state_dict()``; state tensors keep their dtype (fp32 for low-precision params).

        ``torch.optim.Optimizer.load_state_dict`` casts state to the parameter's dtype, which
        would round a bf16 parameter's fp32 moments to bf16; we restore them from the saved
        tensors after the base class has matched saved ids to parameters.
        """
        super().load_state_dict(state_dict)
        self._state_unchecked = True
        saved_ids = chain.from_iterable(g["params"] for g in state_dict["param_groups"])
        params = chain.from_iterable(g["params"] for g in self.param_groups)
        id_map = dict(zip(saved_ids, params))
        for pid, saved in state_dict["state"].items():
            p = id_map.get(pid)
            if p is None:
                continue
            for key in _STATE_TENSORS:
                if key in saved and isinstance(saved[key], torch.Tensor):
                    self.state[p][key] = saved[key].to(device=p.device, dtype=self._key_dtype(p, key), copy=True)
            if "step" in saved:
                self.state[p]["step"] = torch.as_tensor(saved["step"], dtype=torch.float32).clone()
