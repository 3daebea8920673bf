"""Functional networks for the architecture task families (``arch_tasks``).

Every model is a small frozen dataclass describing one architecture. It knows its parameter
list (``spec``/``shapes``/``n_params``), draws initial parameters from a ``torch.Generator``
(``init(generator, scale)``: ``scale`` multiplies every random init std) and maps
``(params, inputs)`` to logits with ``torch.nn.functional`` ops only (``__call__``), so the
parameters are a plain list of tensors that may carry autograd graph.

* ``TransformerLM``: pre-LN decoder-only byte LM, GPT-2 init, tied or untied output head.
* ``ViT``: patch transformer for 8x8 images, cls token or mean pooling.
* ``RNNLM``: GRU or LSTM byte LM, one or more layers. The recurrences run through fused
  ``autograd.Function`` s (a no-graph forward loop and a hand-written backward loop, ~3x cheaper
  than recording every op per time step); under ``create_graph`` the backward differentiates the
  plain-op reference (``gru_reference``/``lstm_reference``) instead, so double backward is exact.
* ``ResMLP``: residual MLP with pre-LN blocks. ``BNCNN``: conv + batch norm (batch statistics) +
  ReLU. ``EmbeddingBag``: masked mean of token embeddings (``padding_idx=0``) and a linear head.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["TransformerLM", "ViT", "RNNLM", "ResMLP", "BNCNN", "EmbeddingBag", "gru_sequence",
           "lstm_sequence", "gru_reference", "lstm_reference"]

# A spec entry: (shape, fill). fill: a float (normal std, times the init scale), "one", "zero", or
# ("pad", std): normal rows with row 0 (the padding token) zero.
Spec = list[tuple[tuple[int, ...], Any]]


VIT_INITS = ("fan_in", "nanogpt")  # ViT.init_style


class _Model:
    def spec(self) -> Spec:
        raise NotImplementedError

    def shapes(self) -> list[tuple[int, ...]]:
        return [s for s, _ in self.spec()]

    def n_params(self) -> int:
        return sum(math.prod(s) for s in self.shapes())

    def init(self, gen: torch.Generator, scale: float = 1.0) -> list[Tensor]:
        out = []
        for shape, fill in self.spec():
            if fill == "one":
                out.append(torch.ones(shape))
            elif fill == "zero":
                out.append(torch.zeros(shape))
            elif isinstance(fill, tuple):
                t = torch.randn(shape, generator=gen) * (fill[1] * scale)
                t[0] = 0.0
                out.append(t)
            else:
                out.append(torch.randn(shape, generator=gen) * (fill * scale))
        return out


# ----------------------------------------------------------------------------- transformer blocks

def _block_spec(d: int, ratio: int, layers: int, std: float = 0.02) -> Spec:
    res = std / math.sqrt(2 * layers)  # GPT-2: residual projections scaled by 1/sqrt(2 * layers)
    one = [((d,), "one"), ((d,), "zero"), ((3 * d, d), std), ((3 * d,), "zero"), ((d, d), res), ((d,), "zero"),
           ((d,), "one"), ((d,), "zero"), ((ratio * d, d), std), ((ratio * d,), "zero"), ((d, ratio * d), res),
           ((d,), "zero")]
    return one * layers


def _blocks(x: Tensor, params: Sequence[Tensor], heads: int, causal: bool) -> Tensor:
    """Pre-LN transformer blocks on ``x`` ``[B, T, d]``; ``params`` holds 12 tensors per block."""
    B, T, d = x.shape
    for i in range(0, len(params), 12):
        ln1w, ln1b, wqkv, bqkv, wo, bo, ln2w, ln2b, w1, b1, w2, b2 = params[i:i + 12]
        h = F.layer_norm(x, (d,), ln1w, ln1b)
        q, k, v = F.linear(h, wqkv, bqkv).view(B, T, 3, heads, d // heads).permute(2, 0, 3, 1, 4).unbind(0)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        x = x + F.linear(a.transpose(1, 2).reshape(B, T, d), wo, bo)
        h = F.layer_norm(x, (d,), ln2w, ln2b)
        x = x + F.linear(F.gelu(F.linear(h, w1, b1)), w2, b2)
    return x


@dataclass(frozen=True)
class TransformerLM(_Model):
    """Decoder-only LM: token + learned positional embedding, ``layers`` pre-LN causal blocks,
    final LayerNorm, output head tied to the token embedding or separate. GPT-2 init."""

    vocab: int = 256
    d: int = 32
    heads: int = 2
    layers: int = 1
    ctx: int = 32
    ratio: int = 4
    tied: bool = True

    def spec(self) -> Spec:
        s = [((self.vocab, self.d), 0.02), ((self.ctx, self.d), 0.01)]
        s += _block_spec(self.d, self.ratio, self.layers)
        s += [((self.d,), "one"), ((self.d,), "zero")]
        return s if self.tied else s + [((self.vocab, self.d), 0.02)]

    def __call__(self, params: Sequence[Tensor], tokens: Tensor) -> Tensor:
        """``tokens`` ``[B, T]`` (T <= ctx) -> logits ``[B, T, vocab]``."""
        wte, wpe = params[0], params[1]
        nb = 12 * self.layers
        x = F.embedding(tokens, wte) + wpe[: tokens.shape[1]]
        x = _blocks(x, params[2:2 + nb], self.heads, causal=True)
        x = F.layer_norm(x, (self.d,), params[2 + nb], params[3 + nb])
        return F.linear(x, wte if self.tied else params[4 + nb])


@dataclass(frozen=True)
class ViT(_Model):
    """Patch transformer on ``[B, N, patch*patch]`` patches: linear patch embedding, learned
    positions, optional cls token, pre-LN blocks, final LayerNorm, cls or mean pooling, linear head."""

    n_patches: int = 16
    patch_dim: int = 4
    d: int = 32
    heads: int = 2
    layers: int = 1
    ratio: int = 2
    cls: bool = True
    classes: int = 10
    # "fan_in": patch embedding and head with std 1/sqrt(fan-in); "nanogpt": std 0.02 for them too, like
    # every other matrix (the transformer benchmark's ViT, ``benchmarking.transformer_models``). The two
    # want different steps: Adam's best held-out lr on the digits is 3e-3 and 3e-4 for a 4-layer d-64 ViT
    # (benchmarks/results/meta-v2/heldout-vit-regime/README.md).
    init_style: str = "fan_in"

    def __post_init__(self) -> None:
        if self.init_style not in VIT_INITS:
            raise ValueError(f"ViT init_style must be one of {VIT_INITS}, got {self.init_style!r}")

    def spec(self) -> Spec:
        n_tok = self.n_patches + int(self.cls)
        nano = self.init_style == "nanogpt"
        patch_std, head_std = (0.02, 0.02) if nano else (1 / math.sqrt(self.patch_dim), 1 / math.sqrt(self.d))
        s = [((self.d, self.patch_dim), patch_std), ((self.d,), "zero"), ((n_tok, self.d), 0.02)]
        s += [((1, self.d), 0.02)] if self.cls else []
        s += _block_spec(self.d, self.ratio, self.layers)
        return s + [((self.d,), "one"), ((self.d,), "zero"), ((self.classes, self.d), head_std),
                    ((self.classes,), "zero")]

    def __call__(self, params: Sequence[Tensor], patches: Tensor) -> Tensor:
        x = F.linear(patches, params[0], params[1])
        i = 3
        if self.cls:
            x = torch.cat([params[3].expand(x.shape[0], 1, self.d), x], dim=1)
            i = 4
        x = x + params[2]
        nb = 12 * self.layers
        x = _blocks(x, params[i:i + nb], self.heads, causal=False)
        lnw, lnb, w, b = params[i + nb:i + nb + 4]
        x = F.layer_norm(x, (self.d,), lnw, lnb)
        return F.linear(x[:, 0] if self.cls else x.mean(1), w, b)


# ----------------------------------------------------------------------------- recurrences

def gru_reference(gi: Tensor, w_hh: Tensor, b_hh: Tensor) -> Tensor:
    """GRU over time with plain autograd ops (PyTorch's gate layout r, z, n). ``gi`` ``[T, B, 3H]``:
    the input projections (with ``b_ih``) of every step; returns the hidden states ``[T, B, H]``
    from a zero initial state."""
    H = w_hh.shape[1]
    h = gi.new_zeros(gi.shape[1], H)
    w_t, outs = w_hh.t(), []
    for g in gi.unbind(0):
        gh = torch.addmm(b_hh, h, w_t)
        r, z = torch.sigmoid(g[:, :2 * H] + gh[:, :2 * H]).chunk(2, 1)
        n = torch.tanh(torch.addcmul(g[:, 2 * H:], r, gh[:, 2 * H:]))
        h = torch.lerp(n, h, z)
        outs.append(h)
    return torch.stack(outs)


def lstm_reference(gi: Tensor, w_hh: Tensor) -> Tensor:
    """LSTM over time with plain autograd ops (gate layout i, f, o, g). ``gi`` ``[T, B, 4H]``: input
    projections plus bias; returns the hidden states ``[T, B, H]`` from zero initial states."""
    H = w_hh.shape[1]
    h = c = gi.new_zeros(gi.shape[1], H)
    w_t, outs = w_hh.t(), []
    for g in gi.unbind(0):
        a = torch.addmm(g, h, w_t)
        i, f, o = torch.sigmoid(a[:, :3 * H]).chunk(3, 1)
        c = torch.addcmul(f * c, i, torch.tanh(a[:, 3 * H:]))
        h = o * torch.tanh(c)
        outs.append(h)
    return torch.stack(outs)


class _GRUSeq(torch.autograd.Function):
    # Per-step tensors are views made once by ``unbind`` (indexing inside the loop costs more than the maths).
    @staticmethod
    def forward(ctx, gi: Tensor, w_hh: Tensor, b_hh: Tensor) -> Tensor:
        T, B, H3 = gi.shape
        H = H3 // 3
        hs = gi.new_zeros(T + 1, B, H)
        rz, n, gh = gi.new_empty(T, B, 2 * H), gi.new_empty(T, B, H), gi.new_empty(T, B, H3)
        gi_rz, gi_n = (x.unbind(0) for x in gi.split([2 * H, H], -1))
        gh_rz, gh_n = (x.unbind(0) for x in gh.split([2 * H, H], -1))
        r, z = (x.unbind(0) for x in rz.split([H, H], -1))
        hs_, rz_, n_, gh_ = hs.unbind(0), rz.unbind(0), n.unbind(0), gh.unbind(0)
        w_t = w_hh.t()
        for t in range(T):
            torch.addmm(b_hh, hs_[t], w_t, out=gh_[t])
            torch.add(gi_rz[t], gh_rz[t], out=rz_[t]).sigmoid_()
            torch.addcmul(gi_n[t], r[t], gh_n[t], out=n_[t]).tanh_()
            torch.lerp(n_[t], hs_[t], z[t], out=hs_[t + 1])
        ctx.save_for_backward(gi, w_hh, b_hh, hs, rz, n, gh)
        return hs[1:]

    @staticmethod
    def backward(ctx, dout: Tensor):
        gi, w_hh, b_hh, hs, rz, n, gh = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: differentiate the reference for exact double backward
            return _reference_grads(ctx, gru_reference, (gi, w_hh, b_hh), dout)
        T, B, H = n.shape
        z = rz[..., H:]
        drz_fac = (rz * (1 - rz)).unbind(0)
        dn_fac = ((1 - z) * (1 - n * n)).unbind(0)
        hmn = (hs[:-1] - n).unbind(0)
        r_, z_, ghn_, dout_ = rz[..., :H].unbind(0), z.unbind(0), gh[..., 2 * H:].unbind(0), dout.unbind(0)
        dgh = gi.new_empty(gi.shape)
        dgh_, dgh_rz = dgh.unbind(0), dgh[..., :2 * H].unbind(0)
        dgh_r, dgh_z, dgh_n = (x.unbind(0) for x in dgh.split([H, H, H], -1))
        dgi_n = gi.new_empty(T, B, H)
        dgi_n_ = dgi_n.unbind(0)
        dh = torch.zeros_like(hs[0])
        for t in range(T - 1, -1, -1):
            dh = dh + dout_[t]
            dan = torch.mul(dh, dn_fac[t], out=dgi_n_[t])
            torch.mul(dan, ghn_[t], out=dgh_r[t])
            torch.mul(dh, hmn[t], out=dgh_z[t])
            dgh_rz[t].mul_(drz_fac[t])
            torch.mul(dan, r_[t], out=dgh_n[t])
            dh = torch.addmm(dh * z_[t], dgh_[t], w_hh)
        flat = dgh.reshape(T * B, 3 * H)
        dgi = torch.cat([dgh[..., :2 * H], dgi_n], -1)
        return dgi, flat.t() @ hs[:-1].reshape(T * B, H), flat.sum(0)


class _LSTMSeq(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gi: Tensor, w_hh: Tensor) -> Tensor:
        T, B, H4 = gi.shape
        H = H4 // 4
        hs, cs = gi.new_zeros(T + 1, B, H), gi.new_zeros(T + 1, B, H)
        a, tc = gi.new_empty(T, B, H4), gi.new_empty(T, B, H)
        a_, ifo_, g_ = a.unbind(0), a[..., :3 * H].unbind(0), a[..., 3 * H:].unbind(0)
        i_, f_, o_ = (x.unbind(0) for x in a[..., :3 * H].split([H, H, H], -1))
        gi_, hs_, cs_, tc_ = gi.unbind(0), hs.unbind(0), cs.unbind(0), tc.unbind(0)
        w_t = w_hh.t()
        for t in range(T):
            torch.addmm(gi_[t], hs_[t], w_t, out=a_[t])
            ifo_[t].sigmoid_()
            g_[t].tanh_()
            torch.addcmul(f_[t] * cs_[t], i_[t], g_[t], out=cs_[t + 1])
            torch.tanh(cs_[t + 1], out=tc_[t])
            torch.mul(o_[t], tc_[t], out=hs_[t + 1])
        ctx.save_for_backward(gi, w_hh, hs, cs, a, tc)
        return hs[1:]

    @staticmethod
    def backward(ctx, dout: Tensor):
        gi, w_hh, hs, cs, a, tc = ctx.saved_tensors
        if torch.is_grad_enabled():
            return _reference_grads(ctx, lstm_reference, (gi, w_hh), dout)
        T, B, H = tc.shape
        fac = torch.cat([a[..., :3 * H] * (1 - a[..., :3 * H]), 1 - a[..., 3 * H:] ** 2], -1)
        i, f, o, g = a.chunk(4, -1)
        dtc_fac = (o * (1 - tc * tc)).unbind(0)
        i_, f_, g_, cs_, tc_ = i.unbind(0), f.unbind(0), g.unbind(0), cs.unbind(0), tc.unbind(0)
        fac_, dout_ = fac.unbind(0), dout.unbind(0)
        da = gi.new_empty(gi.shape)
        da_ = da.unbind(0)
        di_, df_, do_, dg_ = (x.unbind(0) for x in da.split([H, H, H, H], -1))
        dh, dc = torch.zeros_like(hs[0]), torch.zeros_like(hs[0])
        for t in range(T - 1, -1, -1):
            dh = dh + dout_[t]
            dc = torch.addcmul(dc, dh, dtc_fac[t])
            torch.mul(dc, g_[t], out=di_[t])
            torch.mul(dc, cs_[t], out=df_[t])
            torch.mul(dh, tc_[t], out=do_[t])
            torch.mul(dc, i_[t], out=dg_[t])
            da_[t].mul_(fac_[t])
            dc = dc * f_[t]
            dh = da_[t] @ w_hh
        return da, da.reshape(T * B, 4 * H).t() @ hs[:-1].reshape(T * B, H)


def _reference_grads(ctx, fn, inputs: tuple[Tensor, ...], dout: Tensor) -> tuple[Tensor | None, ...]:
    """Gradients of ``fn(*inputs)`` through plain ops, with graph (the double-backward path)."""
    need = [i for i, x in enumerate(inputs) if ctx.needs_input_grad[i]]
    with torch.enable_grad():
        grads = torch.autograd.grad(fn(*inputs), [inputs[i] for i in need], dout, create_graph=True)
    out: list[Tensor | None] = [None] * len(inputs)
    for i, g in zip(need, grads):
        out[i] = g
    return tuple(out)


def gru_sequence(gi: Tensor, w_hh: Tensor, b_hh: Tensor) -> Tensor:
    """``gru_reference``'s result and gradients, through the fused ``_GRUSeq``."""
    return _GRUSeq.apply(gi, w_hh, b_hh)


def lstm_sequence(gi: Tensor, w_hh: Tensor) -> Tensor:
    """``lstm_reference``'s result and gradients, through the fused ``_LSTMSeq``."""
    return _LSTMSeq.apply(gi, w_hh)


@dataclass(frozen=True)
class RNNLM(_Model):
    """Byte LM: embedding, ``layers`` GRU or LSTM layers, linear head. ``fused=False`` records
    every op (the reference path; same values and gradients)."""

    cell: str = "gru"
    vocab: int = 256
    emb: int = 32
    hidden: int = 32
    layers: int = 1
    fused: bool = True

    def spec(self) -> Spec:
        H, gates = self.hidden, 3 if self.cell == "gru" else 4
        s: Spec = [((self.vocab, self.emb), 1.0)]
        for layer in range(self.layers):
            fan = self.emb if layer == 0 else H
            s += [((gates * H, fan), 1 / math.sqrt(fan)), ((gates * H,), "zero"), ((gates * H, H), 1 / math.sqrt(H))]
            s += [((gates * H,), "zero")] if self.cell == "gru" else []
        return s + [((self.vocab, H), 1 / math.sqrt(H)), ((self.vocab,), "zero")]

    def __call__(self, params: Sequence[Tensor], tokens: Tensor) -> Tensor:
        """``tokens`` ``[B, T]`` -> logits ``[T, B, vocab]`` (time first)."""
        x = F.embedding(tokens.t(), params[0])
        i = 1
        for _ in range(self.layers):
            gi = F.linear(x, params[i], params[i + 1])
            if self.cell == "gru":
                x = (gru_sequence if self.fused else gru_reference)(gi, params[i + 2], params[i + 3])
                i += 4
            else:
                x = (lstm_sequence if self.fused else lstm_reference)(gi, params[i + 2])
                i += 3
        return F.linear(x, params[i], params[i + 1])


# ----------------------------------------------------------------------------- MLP, CNN, bag of embeddings

_ACT = {"relu": torch.relu, "gelu": F.gelu, "tanh": torch.tanh}
_GAIN = {"relu": math.sqrt(2.0), "gelu": math.sqrt(2.0), "tanh": 1.0}


@dataclass(frozen=True)
class ResMLP(_Model):
    """``in -> width``, ``blocks`` x ``x + W2 act(W1 LN(x))``, final LN, linear head. Fan-in init;
    the second layer of each block is scaled by ``1/sqrt(blocks)``."""

    in_dim: int = 64
    width: int = 32
    blocks: int = 2
    ratio: int = 1
    act: str = "relu"
    classes: int = 10

    def spec(self) -> Spec:
        w, h = self.width, self.ratio * self.width
        s: Spec = [((w, self.in_dim), 1 / math.sqrt(self.in_dim)), ((w,), "zero")]
        for _ in range(self.blocks):
            s += [((w,), "one"), ((w,), "zero"), ((h, w), _GAIN[self.act] / math.sqrt(w)), ((h,), "zero"),
                  ((w, h), 1 / math.sqrt(h * self.blocks)), ((w,), "zero")]
        return s + [((w,), "one"), ((w,), "zero"), ((self.classes, w), 1 / math.sqrt(w)), ((self.classes,), "zero")]

    def __call__(self, params: Sequence[Tensor], x: Tensor) -> Tensor:
        act, w = _ACT[self.act], (self.width,)
        x = F.linear(x, params[0], params[1])
        for i in range(2, 2 + 6 * self.blocks, 6):
            lw, lb, w1, b1, w2, b2 = params[i:i + 6]
            x = x + F.linear(act(F.linear(F.layer_norm(x, w, lw, lb), w1, b1)), w2, b2)
        lw, lb, wh, bh = params[-4:]
        return F.linear(F.layer_norm(x, w, lw, lb), wh, bh)


@dataclass(frozen=True)
class BNCNN(_Model):
    """3x3 convs (no bias) each followed by batch norm with the batch's own statistics (no running
    stats) and ReLU; then global average pooling and a linear head. Input ``[B, 1, 8, 8]``."""

    channels: tuple[int, ...] = (8, 16)
    strides: tuple[int, ...] = (1, 2)
    classes: int = 10

    def spec(self) -> Spec:
        s: Spec = []
        c_in = 1
        for c in self.channels:
            s += [((c, c_in, 3, 3), math.sqrt(2.0 / (9 * c_in))), ((c,), "one"), ((c,), "zero")]
            c_in = c
        return s + [((self.classes, c_in), 1 / math.sqrt(c_in)), ((self.classes,), "zero")]

    def __call__(self, params: Sequence[Tensor], x: Tensor) -> Tensor:
        for j, stride in enumerate(self.strides):
            w, g, b = params[3 * j:3 * j + 3]
            x = torch.relu(F.batch_norm(F.conv2d(x, w, stride=stride, padding=1), None, None, g, b, training=True))
        return F.linear(x.mean((2, 3)), params[-2], params[-1])


@dataclass(frozen=True)
class EmbeddingBag(_Model):
    """Token ids ``[B, L]`` with 0 = padding -> mean of the non-pad embeddings -> linear head.
    The padding row starts at zero and gets exactly zero gradient (``padding_idx=0``; pad
    positions are also masked out of the mean, so the row never affects the output)."""

    vocab: int = 257
    dim: int = 16
    classes: int = 8

    def spec(self) -> Spec:
        return [((self.vocab, self.dim), ("pad", 1.0)), ((self.classes, self.dim), 1 / math.sqrt(self.dim)),
                ((self.classes,), "zero")]

    def __call__(self, params: Sequence[Tensor], tokens: Tensor) -> Tensor:
        mask = (tokens != 0).unsqueeze(-1).to(params[0].dtype)
        e = F.embedding(tokens, params[0], padding_idx=0) * mask
        pooled = e.sum(1) / mask.sum(1).clamp_min(1.0)
        return F.linear(pooled, params[1], params[2])
