r"""The inner optimizer as a pure function: ``init_inner`` and ``inner_step`` on an ``InnerState``.

Meta-training (``trainer``, ``estimators``, ``validation``) and the few-shot family
(``few_shot``) all run the learned rule on one flat parameter vector; this module is the one
place that does it, in the style of learned_optimization's ``init``/``update`` pair: the state is
an immutable tuple, a step returns a new one, and nothing is modified in place, so a step is
differentiable in the parameters, the gradient, the rule's weights and the learning rate.

One step, with :math:`u_t` and the new ``m, v, h, c`` from ``learned_optim.update.lstm_rule``
(the rule's maths is documented there), :math:`t` the number of this step (1 for the first):

.. math::
    (u_t, m_t, v_t, h_t, c_t) = \mathrm{lstm\_rule}(g_t, m_{t-1}, v_{t-1}, h_{t-1}, c_{t-1}, t)

    p_t = p_{t-1} (1 - \eta\lambda) - \eta\, u_t

with :math:`\lambda` the decoupled weight decay (0 by default; AdamW's convention).

``impl="reference"`` (the default) computes the step with ``lstm_rule`` in torch ops, with
autograd. Where no gradient flows through the step (PES, validation), ``impl="auto"`` computes the
same maths with the batched backends of ``learned_optim.update`` (the C loop on CPU where it
applies, else the eager loop; ``"fused"`` or ``"eager"`` to require one): one pass over the
coordinates instead of ~40 torch ops, equal to the reference up to rounding (in float32, one
step agrees to ~1e-7 of the parameters' scale). Runs that differ only in ``impl`` are therefore
different runs, not copies: the reference stays the default so that every earlier run
reproduces bit for bit.

Example::

    >>> import torch
    >>> from learned_optim.network import CoordinatewiseLSTM
    >>> from learned_optim.meta.inner import init_inner, inner_step
    >>> net = CoordinatewiseLSTM()                 # zero head: the rule is exactly Adam
    >>> state = init_inner(torch.tensor([1.0, -2.0]), net.config)
    >>> for _ in range(3):
    ...     grads = 2 * state.params               # gradient of sum(p^2)
    ...     state = inner_step(state, grads, net, net.config, lr=0.1)
    >>> state.step, [round(x, 4) for x in state.params.tolist()]   # ~ p - 3 * lr * sign(p)
    (3, [0.7016, -1.7006])
"""

from __future__ import annotations

import math
from typing import Mapping, NamedTuple, Sequence

import torch
from torch import Tensor

from ..kernels.rule import compute_dtype, prepare_batch, prepare_rule
from ..network import CoordinatewiseLSTM, LSTMOptimizerConfig
from ..update import flat_cautious_factor, flat_context, flat_tensor_context, lstm_rule, update_batch

__all__ = ["InnerState", "init_inner", "inner_step", "decay_mask", "INNER_IMPLS"]

# "reference": lstm_rule (differentiable); the others: update.update_batch without autograd
INNER_IMPLS = ("reference", "auto", "fused", "eager")


class InnerState(NamedTuple):
    """The state of one inner optimisation: flat parameters and the rule's per-coordinate state.

    Attributes:
        params: ``[N]`` the flat parameters :math:`p`.
        exp_avg: ``[N]`` the first moment :math:`m` (Adam's ``exp_avg``).
        exp_avg_sq: ``[N]`` the second moment :math:`v` (Adam's ``exp_avg_sq``).
        h: ``[H, N]`` the LSTM hidden state, ``H = config.hidden_size``.
        c: ``[H, N]`` the LSTM cell state.
        step: the number of updates applied so far, a Python ``int`` (0 for a fresh state). The
            rule receives ``float(step + 1)``: its bias corrections ``1 - beta**t`` are then
            Python float powers, the same values for an ``int`` or a ``float`` ``t``.
    """

    params: Tensor
    exp_avg: Tensor
    exp_avg_sq: Tensor
    h: Tensor
    c: Tensor
    step: int = 0

    @classmethod
    def fresh(cls, params: Tensor, hidden_size: int) -> "InnerState":
        """A fresh state on an independent copy of ``params`` (detached, cloned) for an LSTM of
        ``hidden_size`` units: ``init_inner`` for callers that hold only the hidden size."""
        return _zeros(params.detach().clone(), hidden_size)

    def detached(self) -> "InnerState":
        """The same values cut from any autograd graph (a truncation boundary); no copy."""
        return self._replace(**{k: getattr(self, k).detach() for k in _TENSORS})

    def clone(self) -> "InnerState":
        """An independent copy (detached), e.g. for the second member of a PES pair."""
        return self._replace(**{k: getattr(self, k).detach().clone() for k in _TENSORS})

    def tensors(self) -> dict[str, Tensor]:
        """The five tensors by name (how checkpoints store a state)."""
        return {k: getattr(self, k) for k in _TENSORS}


_TENSORS = ("params", "exp_avg", "exp_avg_sq", "h", "c")


def init_inner(params: Tensor, config: LSTMOptimizerConfig) -> InnerState:
    """A fresh state for the flat parameters ``params``: zero moments and LSTM state, step 0.

    Args:
        params: ``[N]`` flat parameters. Kept as given (not detached or copied), so an inner
            loop can stay differentiable in its starting point (a learned initialisation);
            pass ``params.detach().clone()`` for an independent leaf.
        config: the rule's config; ``config.hidden_size`` sets the shape ``[H, N]`` of ``h``, ``c``.
    Returns:
        ``InnerState(params, m=0, v=0, h=0, c=0, step=0)``, the zeros in ``params``' dtype and device.

    Example::

        >>> import torch
        >>> from learned_optim.network import LSTMOptimizerConfig
        >>> s = init_inner(torch.zeros(5), LSTMOptimizerConfig(hidden_size=4))
        >>> tuple(s.h.shape), s.step
        ((4, 5), 0)
    """
    return _zeros(params, config.hidden_size)


def _zeros(params: Tensor, hidden_size: int) -> InnerState:
    n = params.numel()
    kw = {"dtype": params.dtype, "device": params.device}
    z = torch.zeros(n, **kw)
    return InnerState(params, z, z.clone(), torch.zeros(hidden_size, n, **kw), torch.zeros(hidden_size, n, **kw), 0)


def inner_step(
    state: InnerState,
    grads: Tensor,
    weights: CoordinatewiseLSTM | Mapping[str, Tensor],
    config: LSTMOptimizerConfig,
    lr: float | Tensor,
    shapes: Sequence[torch.Size] | None = None,
    weight_decay: float | Tensor = 0.0,
    impl: str = "reference",
) -> InnerState:
    """One update of the learned rule: ``p * (1 - lr * weight_decay) - lr * u`` with ``u`` from
    ``lstm_rule``. Pure.

    Nothing is modified in place; with ``impl="reference"`` the result carries autograd graph to
    whatever inputs carry it (``state``, ``grads``, ``weights``, ``lr``) when grad mode is on.
    Call it under ``torch.no_grad()`` for a graph-free step.

    Args:
        state: the state before the step (``state.step`` updates done so far).
        grads: ``[N]`` the gradient of the loss at ``state.params``.
        weights: the rule's meta-parameters: a ``CoordinatewiseLSTM`` or a mapping with its
            four tensors (``network.WEIGHT_NAMES``), e.g. perturbed copies for PES.
        config: the rule's constants (normally ``weights.config``).
        lr: the learning rate :math:`\\eta`, a float or a scalar tensor (a learned step scale).
        shapes: the shapes of the tensors the flat parameters hold, in order. Needed (and only
            used) when ``config.context_features`` is not empty (the per-tensor context comes
            from them, ``update.flat_context``) or with ``config.cautious_rescale`` (a count per
            tensor, ``update.flat_cautious_factor``). Default ``None``.
        weight_decay: the decoupled weight decay :math:`\\lambda`: a float, or an ``[N]`` tensor of
            per-coordinate values (e.g. 0 on biases and norm gains, ``decay_mask``). Default 0.0.
        impl: ``"reference"`` (default: ``lstm_rule``, differentiable), or ``"auto"``, ``"fused"``,
            ``"eager"``: the batched backends of ``learned_optim.update.learned_update`` (the C loop
            on CPU), without autograd: grad mode must be off and ``lr`` a number.
    Returns:
        The state after the step, ``step`` incremented by one.

    Example::

        >>> import torch
        >>> from learned_optim.network import CoordinatewiseLSTM
        >>> net = CoordinatewiseLSTM()
        >>> s = inner_step(init_inner(torch.ones(2), net.config), torch.ones(2), net, net.config, 1e-3)
        >>> s.step, [round(x, 6) for x in s.params.tolist()]     # Adam's first step: p - lr * sign(g)
        (1, [0.999, 0.999])
        >>> with torch.no_grad():                                 # the same step by the C loop
        ...     f = inner_step(init_inner(torch.ones(2), net.config), torch.ones(2), net, net.config, 1e-3,
        ...                    impl="auto")
        >>> torch.allclose(f.params, s.params)
        True
    """
    if impl not in INNER_IMPLS:
        raise ValueError(f"impl must be one of {INNER_IMPLS}, got {impl!r}")
    context = None
    if config.context_features and shapes is None:
        raise ValueError(f"this rule has context_features {config.context_features}: pass shapes, the shapes "
                         "of the tensors in the flat parameters")
    if config.cautious_rescale and shapes is None:
        raise ValueError("this rule has cautious_rescale (a count per tensor): pass shapes, the shapes of the "
                         "tensors in the flat parameters")
    if impl != "reference":
        return _batched_step(state, grads, weights, config, lr, shapes, weight_decay, impl)
    if config.context_features:
        context = flat_context(state.params, shapes, config, (state.exp_avg, state.exp_avg_sq, state.step), grads)
    out = lstm_rule(grads, state.exp_avg, state.exp_avg_sq, state.h, state.c, float(state.step + 1), weights, config,
                    context, flat_cautious_factor(grads, state.exp_avg, shapes, config))
    params = state.params
    if isinstance(weight_decay, Tensor) or weight_decay != 0.0:  # no extra op (and rounding) without decay
        params = params * (1 - lr * weight_decay)
    return InnerState(params - lr * out.direction, out.exp_avg, out.exp_avg_sq, out.h, out.c, state.step + 1)


def _batched_step(state: InnerState, grads: Tensor, weights, config: LSTMOptimizerConfig, lr: float | Tensor,
                  shapes: Sequence[torch.Size] | None, weight_decay: float | Tensor, impl: str) -> InnerState:
    """``inner_step`` by ``update.update_batch``: copies of the state, updated in place. The
    per-tensor context and the cautious rescale need one segment per tensor; without them the
    flat vector is one."""
    if torch.is_grad_enabled():
        raise ValueError(f"inner_step(impl={impl!r}) runs without autograd: call it under torch.no_grad(), or "
                         "use impl='reference' to differentiate through the step")
    if isinstance(lr, Tensor):
        if lr.numel() != 1:
            raise ValueError(f"inner_step(impl={impl!r}) needs one learning rate, got lr of shape {tuple(lr.shape)}")
        lr = float(lr)
    p = state.params.detach()
    if shapes is not None and (config.context_features or config.cautious_rescale):
        numels = [math.prod(s) for s in shapes]
        if sum(numels) != p.numel():
            raise ValueError(f"shapes {list(shapes)} hold {sum(numels)} values, params has {p.numel()}")
        # of the parameters (and moments) before this step
        context = None if not config.context_features else flat_tensor_context(
            p, shapes, config, (state.exp_avg, state.exp_avg_sq, state.step), grads)
    else:
        numels, context = [p.numel()], None
    wd = 0.0
    if isinstance(weight_decay, Tensor):
        p = p * (1 - lr * weight_decay)  # the kernel's decay is one number; decoupled, so apply it first
    else:
        wd, p = float(weight_decay), p.clone()
    m, v = state.exp_avg.clone(), state.exp_avg_sq.clone()
    # the kernels take each tensor's LSTM state as one contiguous [H, n] block: always a copy (a
    # single block is the input itself, which must stay untouched)
    hs, cs = ([x.clone(memory_format=torch.contiguous_format) for x in t.split(numels, 1)] for t in (state.h, state.c))
    rule = prepare_rule(weights, config, device=p.device, dtype=compute_dtype(p.dtype), lr=float(lr),
                        weight_decay=wd, maximize=False)
    batch = prepare_batch(p.split(numels), grads.detach().split(numels), m.split(numels), v.split(numels), hs, cs,
                          [float(state.step + 1)] * len(numels), config=config, rule=rule, context=context)
    update_batch(rule, batch, impl=impl)
    h, c = (hs[0], cs[0]) if len(numels) == 1 else (torch.cat(hs, 1), torch.cat(cs, 1))
    return InnerState(p, m, v, h, c, state.step + 1)


def decay_mask(shapes: Sequence[torch.Size], weight_decay: float, dtype: torch.dtype = torch.float32) -> Tensor:
    """The per-coordinate weight decay of flat parameters holding tensors of ``shapes``:
    ``weight_decay`` on tensors with two or more dimensions, 0 on the others (biases, norm gains),
    the transformer benchmark's convention. Returns an ``[N]`` tensor of ``dtype``.

    Example::

        >>> [round(x, 2) for x in decay_mask([torch.Size([2, 2]), torch.Size([3])], 0.1).tolist()]
        [0.1, 0.1, 0.1, 0.1, 0.0, 0.0, 0.0]
    """
    return torch.cat([torch.full((s.numel(),), weight_decay if len(s) >= 2 else 0.0, dtype=dtype) for s in shapes])
