"""A tiny GPT-2 trained by Hugging Face ``Trainer``, as a new user would: AdamW against ``LearnedOptimizer``.

The model is ``GPT2LMHeadModel`` with 2 layers, d = 64, 2 heads and a 256-token (byte) vocabulary; it trains for
200 steps on random 64-byte windows of Python's standard-library sources (``common.text.stdlib_bytes("train")``)
and is evaluated on 256 windows of modules it never sees (``stdlib_bytes("validation")``). Everything is Trainer's
defaults (linear decay of the lr to zero, no warmup, no weight decay, gradient clipping at 1) apart from the
optimizer: AdamW (Trainer's own ``adamw_torch``) at each ``--adamw-lrs``, and ``LearnedOptimizer`` with each
``--weights`` at each ``--learned-lrs``, passed through ``learned_optim.integrations.trainer_optimizer``. Every
optimizer sees the same initial model and the same batches on a given seed.

    python benchmarks/hf_trainer_gpt2.py --out benchmarks/results/hf-trainer-gpt2

Writes ``hf_trainer_gpt2.json`` (every run's evaluation loss and training-loss curve), ``.md`` and ``.png``.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from learned_optim.common.machine import machine_info, machine_line
from learned_optim.common.text import VOCAB_SIZE, corpus_id, stdlib_bytes
from learned_optim.integrations import trainer_optimizer

BLOCK = 64


class Windows(torch.utils.data.Dataset):
    """``n`` byte windows of length ``BLOCK`` at random offsets (fixed by ``seed``) of a split."""

    def __init__(self, split: str, n: int, seed: int) -> None:
        data = stdlib_bytes(split)
        g = torch.Generator().manual_seed(seed)
        starts = torch.randint(0, data.numel() - BLOCK, (n,), generator=g)
        self.x = torch.stack([data[s:s + BLOCK].long() for s in starts.tolist()])

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.x[i], "labels": self.x[i]}


def run_one(optimizer: str, lr: float, seed: int, steps: int, batch: int, *,
            optimizer_cls_and_kwargs: tuple | None = None) -> dict:
    """One Trainer run: AdamW (``optimizer="adamw"``) or ``LearnedOptimizer`` with the weights named
    ``optimizer``; ``optimizer_cls_and_kwargs`` (default None) passes another optimizer to Trainer instead
    (``optimizer`` then only labels the run)."""
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments, set_seed

    set_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB_SIZE, n_positions=BLOCK, n_embd=64, n_layer=2, n_head=2))
    train, evaluation = Windows("train", steps * batch, seed), Windows("validation", 256, 12345)
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(out, learning_rate=lr, max_steps=steps, per_device_train_batch_size=batch,
                                 per_device_eval_batch_size=64, save_strategy="no", logging_steps=10,
                                 report_to=[], seed=seed, use_cpu=True, disable_tqdm=True)
        if optimizer_cls_and_kwargs is not None:
            extra = {"optimizer_cls_and_kwargs": optimizer_cls_and_kwargs}
        elif optimizer == "adamw":
            extra = {}
        else:
            extra = {"optimizer_cls_and_kwargs": trainer_optimizer(args, weights=optimizer)}
        trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=evaluation, **extra)
        t0 = time.perf_counter()
        trainer.train()
        wall = time.perf_counter() - t0
        eval_loss = trainer.evaluate()["eval_loss"]
    curve = [(h["step"], h["loss"]) for h in trainer.state.log_history if "loss" in h and "step" in h]
    return {"optimizer": optimizer, "lr": lr, "seed": seed, "eval_loss": eval_loss, "train_curve": curve,
            "wall_s": round(wall, 1)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="folder for hf_trainer_gpt2.json/.md/.png")
    ap.add_argument("--adamw-lrs", default="1e-3,3e-3,1e-2", help="AdamW learning rates (comma-separated)")
    ap.add_argument("--weights", default="lstm-h4-v2-cautious-size,lstm-h4-v2-rescale-ratio,lstm-h4-v1",
                    help="LearnedOptimizer weights (comma-separated)")
    ap.add_argument("--learned-lrs", default="1e-3", help="LearnedOptimizer learning rates (comma-separated)")
    ap.add_argument("--extra", default="lstm-h4-v1@1e-4", help="further WEIGHTS@LR runs (comma-separated, or empty)")
    ap.add_argument("--seeds", type=int, default=3, help="seeds per configuration (default 3)")
    ap.add_argument("--steps", type=int, default=200, help="training steps (default 200)")
    ap.add_argument("--batch", type=int, default=16, help="batch size (default 16)")
    args = ap.parse_args(argv)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    torch.set_num_threads(1)
    configs = [("adamw", float(lr)) for lr in args.adamw_lrs.split(",")]
    configs += [(w, float(lr)) for w in args.weights.split(",") for lr in args.learned_lrs.split(",")]
    configs += [(e.split("@")[0], float(e.split("@")[1])) for e in args.extra.split(",") if e]
    machine = machine_info(1)
    t0 = time.perf_counter()
    runs = [run_one(opt, lr, s, args.steps, args.batch) for opt, lr in configs for s in range(args.seeds)]
    summary = []
    for opt, lr in configs:
        losses = [r["eval_loss"] for r in runs if r["optimizer"] == opt and r["lr"] == lr]
        summary.append({"optimizer": opt, "lr": lr, "eval_loss_mean": statistics.mean(losses),
                        "eval_loss_std": statistics.stdev(losses) if len(losses) > 1 else 0.0, "eval_loss": losses})
    command = "python benchmarks/hf_trainer_gpt2.py " + " ".join(sys.argv[1:] if argv is None else argv)
    result = {"command": command, "machine": machine, "corpus_id": corpus_id(), "steps": args.steps,
              "batch": args.batch, "seeds": args.seeds, "wall_s": round(time.perf_counter() - t0, 1),
              "summary": summary, "runs": runs}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "hf_trainer_gpt2.json").write_text(json.dumps(result, indent=1) + "\n")
    best = min(s["eval_loss_mean"] for s in summary if s["optimizer"] == "adamw")
    lines = [
        "# Tiny GPT-2 under Hugging Face Trainer: held-out loss after "
        f"{args.steps} steps ({args.seeds} seeds)", "",
        f"GPT2LMHeadModel (2 layers, d 64, 2 heads, byte vocabulary), {args.steps} steps of batch {args.batch} "
        "on 64-byte windows of Python's standard-library sources, Trainer's defaults (linear lr decay to 0, "
        "no warmup, no weight decay); evaluation loss (nats/byte) on 256 windows of held-out modules. "
        "LearnedOptimizer is passed with "
        "`optimizer_cls_and_kwargs=trainer_optimizer(args, weights=...)`.", "",
        f"Command: `{command}`; wall time {result['wall_s']:.0f} s. Machine: {machine_line(machine)}. "
        f"Corpus: {result['corpus_id']}.", "",
        "| optimizer | lr | eval loss, mean ± std | per seed | vs best AdamW mean |", "|---|---|---|---|---|",
    ]
    for s in summary:
        name = "AdamW" if s["optimizer"] == "adamw" else f"LearnedOptimizer, `{s['optimizer']}`"
        lines.append(f"| {name} | {s['lr']:g} | {s['eval_loss_mean']:.3f} ± {s['eval_loss_std']:.3f} | "
                     + ", ".join(f"{x:.3f}" for x in s["eval_loss"]) + f" | {s['eval_loss_mean'] - best:+.3f} |")
    lines += ["", "Unigram entropy of the training bytes, for scale: "
              f"{_unigram_entropy():.2f} nats/byte. Curves: `hf_trainer_gpt2.json`, `hf_trainer_gpt2.png`."]
    (out / "hf_trainer_gpt2.md").write_text("\n".join(lines) + "\n")
    _plot(runs, summary, out / "hf_trainer_gpt2.png")
    print("\n".join(lines))


def _unigram_entropy() -> float:
    counts = torch.bincount(stdlib_bytes("train").long(), minlength=VOCAB_SIZE).double()
    p = counts[counts > 0] / counts.sum()
    return float(-(p * p.log()).sum())


def _plot(runs: list[dict], summary: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for s in summary:
        rs = [r for r in runs if r["optimizer"] == s["optimizer"] and r["lr"] == s["lr"]]
        steps = [st for st, _ in rs[0]["train_curve"]]
        mean = [statistics.mean(r["train_curve"][i][1] for r in rs) for i in range(len(steps))]
        name = "AdamW" if s["optimizer"] == "adamw" else s["optimizer"]
        ax.plot(steps, mean, label=f"{name} lr {s['lr']:g} (eval {s['eval_loss_mean']:.3f})")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (nats/byte), mean over seeds")
    ax.set_title("Tiny GPT-2 under HF Trainer")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
