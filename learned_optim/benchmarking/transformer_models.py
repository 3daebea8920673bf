"""The transformer benchmark's models and workloads: plain torch modules, no Hugging Face dependency.

* ``GPT``: a GPT-2-style pre-LN decoder-only language model (learned positional embeddings,
  causal self-attention, 4x GELU MLP, tied input/output embedding), nanoGPT's initialisation.
* ``ViT``: a small pre-LN Vision Transformer (patch embedding, cls token, learned positional
  embeddings) for the 8x8 scikit-learn digits.

Both are deterministic on CPU (no dropout), so a seed fixes a run. ``param_groups(model, wd)``
splits the parameters by nanoGPT's convention: 2-D and larger tensors (matrices, embeddings)
get weight decay, 1-D tensors (biases, LayerNorm gains) do not.

The workloads (``WORKLOADS``: ``GPTByte``, ``ViTDigits``) pair a model with its data: minibatches
drawn from a generator, the training loss, and the evaluation (``transformer.train_once`` runs them).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..common.data import digits
from ..common.text import corpus_id, stdlib_bytes

__all__ = ["GPT", "ViT", "param_groups", "count_params", "GPTByte", "ViTDigits", "WORKLOADS", "VIT_SPLIT_SEED",
           "VIT_TRAIN"]

VIT_SPLIT_SEED = 0  # the digits train/test split (a random permutation with this seed)
VIT_TRAIN = 1400  # training images of the split; the remaining 397 are the test set


def _check_dims(name: str, d_model: int, n_heads: int) -> None:
    if d_model % n_heads:
        raise ValueError(f"{name}: d_model ({d_model}) must be divisible by n_heads ({n_heads}); e.g. d_model=128, "
                         f"n_heads=4")


class _Attention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, causal: bool) -> None:
        super().__init__()
        self.n_heads, self.causal = n_heads, causal
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x: Tensor) -> Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class _Block(nn.Module):
    """Pre-LN transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, d_model: int, n_heads: int, mlp_ratio: int, causal: bool) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = _Attention(d_model, n_heads, causal)
        self.ln2 = nn.LayerNorm(d_model)
        self.fc = nn.Linear(d_model, mlp_ratio * d_model)
        self.proj = nn.Linear(mlp_ratio * d_model, d_model)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.proj(F.gelu(self.fc(self.ln2(x))))


def _init_weights(model: nn.Module, n_layers: int) -> None:
    """nanoGPT's initialisation: N(0, 0.02) weights and embeddings, zero biases, and the residual
    projections scaled by 1/sqrt(2 * n_layers) (GPT-2) so the residual stream's variance does not
    grow with depth."""
    for name, p in model.named_parameters():
        if p.dim() >= 2:
            std = 0.02 / math.sqrt(2 * n_layers) if name.endswith("proj.weight") else 0.02
            nn.init.normal_(p, 0.0, std)
        elif name.endswith("bias"):
            nn.init.zeros_(p)


class GPT(nn.Module):
    """Decoder-only byte language model (GPT-2 layout, pre-LN, tied embeddings).

    Args:
        vocab_size: number of tokens (default 256: bytes).
        context: maximum sequence length, the size of the positional embedding (default 64).
        d_model: residual width (default 128).
        n_layers: transformer blocks (default 4).
        n_heads: attention heads; must divide ``d_model`` (default 4).
        mlp_ratio: MLP hidden width / ``d_model`` (default 4).

    ``forward(idx)`` maps int64 tokens ``[B, T]`` (T <= context) to logits ``[B, T, vocab_size]``;
    position t sees tokens 0..t only. With the defaults: 834,304 parameters.
    """

    def __init__(self, vocab_size: int = 256, context: int = 64, d_model: int = 128, n_layers: int = 4,
                 n_heads: int = 4, mlp_ratio: int = 4) -> None:
        super().__init__()
        _check_dims("GPT", d_model, n_heads)
        self.context = context
        self.tok = nn.Embedding(vocab_size, d_model)
        self.pos = nn.Embedding(context, d_model)
        self.blocks = nn.ModuleList(_Block(d_model, n_heads, mlp_ratio, causal=True) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d_model)
        _init_weights(self, n_layers)

    def forward(self, idx: Tensor) -> Tensor:
        t = idx.shape[1]
        if t > self.context:
            raise ValueError(f"GPT: sequence length {t} exceeds the context {self.context}; pass at most "
                             f"{self.context} tokens")
        x = self.tok(idx) + self.pos(torch.arange(t, device=idx.device))
        for block in self.blocks:
            x = block(x)
        return self.ln_f(x) @ self.tok.weight.T  # tied output embedding (Press & Wolf, 2017)


class ViT(nn.Module):
    """A small Vision Transformer (Dosovitskiy et al., 2021) for square grayscale images.

    Args:
        image_size: side of the (square) image in pixels (default 8: scikit-learn digits).
        patch_size: side of a square patch; must divide ``image_size`` (default 2: 16 patches).
        d_model: width (default 64).
        n_layers: transformer blocks (default 4).
        n_heads: attention heads; must divide ``d_model`` (default 4).
        mlp_ratio: MLP hidden width / ``d_model`` (default 4).
        n_classes: outputs (default 10).

    ``forward(x)`` maps flat images ``[B, image_size**2]`` (row-major, as ``common.data.digits()``)
    to logits ``[B, n_classes]`` read from the cls token. With the defaults: 202,186 parameters.
    """

    def __init__(self, image_size: int = 8, patch_size: int = 2, d_model: int = 64, n_layers: int = 4,
                 n_heads: int = 4, mlp_ratio: int = 4, n_classes: int = 10) -> None:
        super().__init__()
        _check_dims("ViT", d_model, n_heads)
        if image_size % patch_size:
            raise ValueError(f"ViT: patch_size ({patch_size}) must divide image_size ({image_size}); e.g. "
                             f"patch_size=2 for 8x8 images")
        self.image_size, self.patch_size = image_size, patch_size
        n_patches = (image_size // patch_size) ** 2
        self.patch = nn.Linear(patch_size * patch_size, d_model)
        self.cls = nn.Parameter(torch.zeros(1, 1, d_model))
        self.pos = nn.Parameter(torch.zeros(1, n_patches + 1, d_model))
        self.blocks = nn.ModuleList(_Block(d_model, n_heads, mlp_ratio, causal=False) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, n_classes)
        _init_weights(self, n_layers)

    def forward(self, x: Tensor) -> Tensor:
        b, s, p = x.shape[0], self.image_size, self.patch_size
        # [B, s*s] -> [B, (s/p)^2, p*p]: non-overlapping p x p patches in row-major order
        patches = x.view(b, s // p, p, s // p, p).permute(0, 1, 3, 2, 4).reshape(b, -1, p * p)
        h = torch.cat([self.cls.expand(b, -1, -1), self.patch(patches)], dim=1) + self.pos
        for block in self.blocks:
            h = block(h)
        return self.head(self.ln_f(h[:, 0]))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Optimizer param groups by nanoGPT's convention: every parameter with >= 2 dimensions
    (weight matrices, embeddings, the ViT's cls token and positional embedding) decays with
    ``weight_decay``; 1-D ones (biases, LayerNorm weights) do not. Each group carries
    ``param_names`` (torch >= 2.6 reports them in errors)."""
    named = list(model.named_parameters())
    decay = [(n, p) for n, p in named if p.dim() >= 2]
    rest = [(n, p) for n, p in named if p.dim() < 2]
    return [{"params": [p for _, p in g], "param_names": [n for n, _ in g], "weight_decay": wd}
            for g, wd in ((decay, weight_decay), (rest, 0.0)) if g]


def count_params(model: nn.Module) -> int:
    """Number of distinct parameters (a tied tensor counts once)."""
    return sum(p.numel() for p in model.parameters())


class GPTByte:
    """``gpt-byte``: a byte-level GPT on Python's standard-library sources.

    Args:
        steps: default training steps (3000, 1.5M tokens: about 1.3 epochs): long enough for the
            warmup + cosine schedule to matter and for late instabilities to show; one run takes 2.5-5
            minutes on one thread of a shared 2-core Xeon (benchmarks/results/transformer-v1).
        batch_size: windows per minibatch (default 8).
        context: tokens per window (default 64; each window holds context + 1 bytes).
        val_windows: validation windows, evenly spaced over the validation bytes (default 64).
    """

    name = "gpt-byte"
    metric = "validation loss (nats/byte)"

    def __init__(self, steps: int = 3000, batch_size: int = 8, context: int = 64, val_windows: int = 64) -> None:
        self.steps, self.batch_size, self.context = steps, batch_size, context
        self.train = stdlib_bytes("train").long()
        val = stdlib_bytes("validation").long()
        # evenly spaced, not random: the same windows for every run, seed and machine
        starts = torch.linspace(0, val.numel() - context - 1, val_windows).long()
        self.val = val[starts[:, None] + torch.arange(context + 1)]
        self.description = (f"byte-level GPT (4 layers, d 128, 4 heads, context {context}, tied embeddings); train "
                            f"on random windows of {len(self.train)} training bytes, validate on {val_windows} fixed "
                            f"windows of the {val.numel()} held-out validation bytes ({corpus_id()})")

    def model(self) -> torch.nn.Module:
        return GPT(context=self.context)

    def batches(self, gen: torch.Generator, steps: int) -> torch.Tensor:
        return torch.randint(0, self.train.numel() - self.context - 1, (steps, self.batch_size), generator=gen)

    def loss(self, model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
        return self._loss(model, self.train[batch[:, None] + torch.arange(self.context + 1)])

    @staticmethod
    def _loss(model: torch.nn.Module, windows: torch.Tensor) -> torch.Tensor:
        logits = model(windows[:, :-1])
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), windows[:, 1:].reshape(-1))

    def evaluate(self, model: torch.nn.Module, final: bool = False) -> dict[str, float]:
        return {"val_loss": float(self._loss(model, self.val))}


class ViTDigits:
    """``vit-digits``: a small ViT classifying scikit-learn's 8x8 digits.

    Args:
        steps: default training steps (1000 of batch 64: about 46 epochs of the 1400 training images).
        batch_size: images per minibatch (default 64).
    """

    name = "vit-digits"
    metric = "test loss"

    def __init__(self, steps: int = 1000, batch_size: int = 64) -> None:
        self.steps, self.batch_size = steps, batch_size
        x, y = digits()
        perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(VIT_SPLIT_SEED))
        self.x_train, self.y_train = x[perm[:VIT_TRAIN]], y[perm[:VIT_TRAIN]]
        self.x_test, self.y_test = x[perm[VIT_TRAIN:]], y[perm[VIT_TRAIN:]]
        self.description = (f"ViT (patch 2, 16 patches + cls, d 64, 4 layers, 4 heads) on scikit-learn digits; "
                            f"{VIT_TRAIN} train / {len(self.y_test)} test images, a random split with seed "
                            f"{VIT_SPLIT_SEED}")

    def model(self) -> torch.nn.Module:
        return ViT()

    def batches(self, gen: torch.Generator, steps: int) -> torch.Tensor:
        # epochs of random permutations (without replacement within an epoch), cut into minibatches
        epochs = math.ceil(steps * self.batch_size / VIT_TRAIN)
        order = torch.cat([torch.randperm(VIT_TRAIN, generator=gen) for _ in range(epochs)])
        return order[:steps * self.batch_size].view(steps, self.batch_size)

    def loss(self, model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model(self.x_train[batch]), self.y_train[batch])

    def evaluate(self, model: torch.nn.Module, final: bool = False) -> dict[str, float]:
        logits = model(self.x_test)
        out = {"val_loss": float(F.cross_entropy(logits, self.y_test)),
               "test_acc": float((logits.argmax(1) == self.y_test).float().mean())}
        if final:  # the whole training set once, at the end only (it is 3.5x the test set)
            out["train_loss"] = float(F.cross_entropy(model(self.x_train), self.y_train))
        return out


WORKLOADS: dict[str, Callable[[], Any]] = {"gpt-byte": GPTByte, "vit-digits": ViTDigits}
