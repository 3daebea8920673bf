"""How large are the learned rule's steps, tensor by tensor, next to Adam's, on each benchmark workload?

The small-task suite is won by Adam at lr ~1e-2, the GPT benchmark by AdamW at 3e-3, the ViT benchmark by AdamW at
3e-4 (benchmarks/results/meta-v2/README.md). A rule run at one lr must therefore take steps ~10x, ~3x and ~0.3x
Adam's at 1e-3 on them. This script measures what the rule actually takes, during the benchmarks' own runs (the
transformer workloads under their warm-up + cosine recipe, the suite's tasks as the quality benchmark trains them),
and which per-tensor statistics it could tell the workloads apart by.

At every ``--every``-th optimizer step, for every tensor with a gradient, it evaluates the float64 reference rule
(``update.lstm_rule``) on the optimizer's state before the step and records, with A = Adam's normalized step
m_hat / (sqrt(v_hat) + eps) and D the rule's step direction (the update is p -= lr * D):

* ``mult`` = rms(D) / rms(A): the rule's effective multiple of Adam's step (1 = Adam at the same lr);
* ``mult_scale`` = rms(D_0) / rms(A), with D_0 the rule's output without its additive term (direction_bound 0):
  the learned per-coordinate multiplier alone; ``additive`` = rms(D - D_0) / rms(A): the additive sign(m) term;
* ``cos``: the cosine between D and A;
* ``adam_rms`` = rms(A) (Adam's normalized step: ~1 where gradients are consistent, small where they are noise),
  ``grad_vs_ema`` = rms(g) / rms(sqrt(v_hat)) (the gradient against its long average: < 1 while it shrinks),
  and the rule's own context inputs (``p_log_rms``, ``log_fan_in``, ``is_vector``).

It only reads the optimizer's state: the runs are the benchmarks' runs, step for step.

    python benchmarks/step_scale_by_tensor.py --out benchmarks/results/step-scale            # default weights
    python benchmarks/step_scale_by_tensor.py --weights DIR --out OUT --workloads vit-digits,wine_mlp
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import platform
import subprocess
import time
from pathlib import Path

import torch

from learned_optim import LearnedOptimizer
from learned_optim.benchmarking import quality, tasks, transformer
from learned_optim.benchmarking.transformer_models import WORKLOADS
from learned_optim.update import lstm_rule, tensor_context

TRANSFORMERS = tuple(WORKLOADS)
DEFAULT_WORKLOADS = ("gpt-byte", "vit-digits", *tasks.task_names())
# what Adam's best lr is on each, relative to the rule's lr 1e-3 (the results cited in the docstring)
WANTED = {"gpt-byte": 3.0, "vit-digits": 0.3, "suite": 10.0}


def _tensor_class(name: str | None, p: torch.Tensor) -> str:
    if name is None:
        return "vector" if p.dim() < 2 else f"{p.dim()}-d"
    for key in ("emb", "pos", "cls", "head", "qkv", "proj", "fc", "ln", "norm", "patch"):
        if key in name:
            return f"{key} ({'vector' if p.dim() < 2 else 'matrix'})"
    return "other vector" if p.dim() < 2 else "other matrix"


class ProbedOptimizer(LearnedOptimizer):
    """``LearnedOptimizer`` that records the rule's step next to Adam's every ``every`` steps, then steps as usual."""

    def __init__(self, params, *, every: int, names: dict[int, str], records: list, **kw) -> None:
        super().__init__(params, **kw)
        self._every, self._names, self._records, self._calls = every, names, records, 0
        self._net64 = copy.deepcopy(self.network).double()  # the rule in float64, apart from the one that steps

    @torch.no_grad()
    def _probe(self) -> None:
        cfg = self.network.config
        no_add = dataclasses.replace(cfg, direction_bound=0.0)
        ps = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
        ctx = None
        if cfg.context_features:  # the moments before this step, as the optimizer's own step reads them
            sts = [self.state.get(p, {}) for p in ps]
            ctx = tensor_context(ps, cfg, exp_avgs=[st.get("exp_avg", torch.zeros_like(p)) for st, p in zip(sts, ps)],
                                 exp_avg_sqs=[st.get("exp_avg_sq", torch.zeros_like(p)) for st, p in zip(sts, ps)],
                                 state_steps=[st.get("step", 0.0) for st in sts], grads=[p.grad for p in ps])
        d64 = torch.float64
        for i, p in enumerate(ps):
            st = self.state.get(p, {})
            n, hs = p.numel(), cfg.hidden_size
            g = p.grad.reshape(-1).to(d64)
            if st:
                m, v = st["exp_avg"].reshape(-1).to(d64), st["exp_avg_sq"].reshape(-1).to(d64)
                h, c = st["lstm_h"].reshape(hs, -1).to(d64), st["lstm_c"].reshape(hs, -1).to(d64)
                t = float(st["step"]) + 1
            else:
                m, v = torch.zeros(n, dtype=d64), torch.zeros(n, dtype=d64)
                h, c, t = torch.zeros(hs, n, dtype=d64), torch.zeros(hs, n, dtype=d64), 1.0
            c_i = ctx[i] if ctx is not None else None
            out = lstm_rule(g, m, v, h, c, t, self._net64, cfg, context=c_i)
            out0 = lstm_rule(g, m, v, h, c, t, self._net64, no_add, context=c_i)
            mh, vh = out.exp_avg / (1 - cfg.beta1 ** t), out.exp_avg_sq / (1 - cfg.beta2 ** t)
            a = mh / (vh.sqrt() + cfg.eps)
            a = torch.where(out.exp_avg_sq == 0, 0.0, a)
            ra = float(a.norm()) / math.sqrt(n)
            if ra == 0:
                continue
            d, d0 = out.direction, out0.direction
            name = self._names.get(id(p))
            rec = {"step": self._calls, "tensor": name, "class": _tensor_class(name, p),
                   "numel": n, "mult": float(d.norm()) / math.sqrt(n) / ra,
                   "mult_scale": float(d0.norm()) / math.sqrt(n) / ra,
                   "additive": float((d - d0).norm()) / math.sqrt(n) / ra,
                   "cos": float(torch.dot(d, a) / (d.norm() * a.norm()).clamp_min(1e-300)), "adam_rms": ra,
                   "grad_vs_ema": float(g.norm() / vh.sum().sqrt().clamp_min(1e-300))}
            if ctx is not None:
                rec.update({name: float(ctx[i, k]) for k, name in enumerate(cfg.context_features)})
            self._records.append(rec)

    def step(self, closure=None):
        self._calls += 1
        if self._calls == 1 or self._calls % self._every == 0:
            self._probe()
        return super().step(closure)


def _weighted_gm(records: list[dict], key: str) -> float:
    """The geometric mean of ``key`` over ``records``, each weighted by its tensor's size."""
    return math.exp(sum(r["numel"] * math.log(max(r[key], 1e-300)) for r in records)
                    / sum(r["numel"] for r in records))


def _summary(records: list[dict], steps: int) -> dict:
    """Per workload: the numel-weighted mean of log(mult) over all tensors and probes (its exp is reported),
    per third of the run, per tensor class over the whole run, and per tensor class and third."""
    def agg(rs):
        if not rs:
            return None
        w = sum(r["numel"] for r in rs)
        return {**{k: _weighted_gm(rs, k) for k in ("mult", "mult_scale", "adam_rms", "grad_vs_ema")},
                "additive": sum(r["numel"] * r["additive"] for r in rs) / w,
                "cos": sum(r["numel"] * r["cos"] for r in rs) / w, "probes": len({r["step"] for r in rs})}
    def third(rs, k):
        return [r for r in rs if (k - 1) * steps / 3 < r["step"] <= k * steps / 3]
    classes = sorted({r["class"] for r in records})
    by_class = {c: [r for r in records if r["class"] == c] for c in classes}
    return {"all": agg(records), "thirds": {f"{k}/3": agg(third(records, k)) for k in (1, 2, 3)},
            "classes": {c: {**agg(rs), "numel": rs[0]["numel"]} for c, rs in by_class.items()},
            "class_thirds": {c: {f"{k}/3": agg(third(rs, k)) for k in (1, 2, 3)} for c, rs in by_class.items()}}


def run(workloads, weights, every_frac, seed, steps_override=None, lr=1e-3) -> dict:
    results = {}
    for wl in workloads:
        records: list[dict] = []
        t0 = time.perf_counter()
        if wl in TRANSFORMERS:
            work = WORKLOADS[wl]()
            steps = (steps_override or {}).get(wl, work.steps)
            every = max(1, round(steps * every_frac))

            def make(groups, every=every, records=records):
                names = {id(p): n for g in groups for p, n in zip(g["params"], g["param_names"])}
                return ProbedOptimizer(groups, every=every, names=names, records=records, lr=lr, weights=weights)
            r = transformer.train_once(work, make, seed, steps, transformer.evaluation_steps(steps))
            final = {"final_val_loss": r["final"], "test_acc": r["test_acc"]}
        else:
            spec = tasks.get_task(wl)
            steps = (steps_override or {}).get(wl, spec.steps)
            every = max(1, round(steps * every_frac))

            def make(params, every=every, records=records):
                return ProbedOptimizer(params, every=every, names={}, records=records, lr=lr, weights=weights)
            r = quality.train_once(spec.problem(), make, seed, steps, spec.batch_size,
                                   quality.evaluation_steps(steps))
            final = {"final_train_loss": r["final"]}
        results[wl] = {"steps": steps, "every": every, **final, "wall_s": time.perf_counter() - t0,
                       "summary": _summary(records, steps), "records": records}
        s = results[wl]["summary"]["all"]
        print(f"{wl}: mult {s['mult']:.2f} (scale {s['mult_scale']:.2f}, additive {s['additive']:.2f}), "
              f"cos {s['cos']:.2f}, adam_rms {s['adam_rms']:.3f}, {results[wl]['wall_s']:.0f} s", flush=True)
    return results


def compact(res: dict, no_records: bool) -> dict:
    """The results as written: every record's numbers to 5 significant digits (the probes' own spread is far wider),
    or no records at all; the summaries are computed before and kept in full."""
    def rounded(rec):
        return {k: float(f"{v:.5g}") if isinstance(v, float) else v for k, v in rec.items()}
    return {wl: {k: v for k, v in r.items() if k != "records"}
            | ({} if no_records else {"records": [rounded(x) for x in r["records"]]}) for wl, r in res.items()}


def _md(res: dict, meta: dict) -> str:
    lines = ["# The learned rule's steps next to Adam's, by workload and tensor class", "",
             f"Weights: `{meta['weights']}`. Command: `{meta['command']}`  ",
             f"Machine: {meta['machine']}; commit `{meta['commit']}`; date (UTC) {meta['date']}; seed {meta['seed']}.",
             "", "mult = rms(rule step) / rms(Adam's normalized step) at the same lr, the numel-weighted geometric",
             "mean over tensors and probes (1 = Adam's step; the script's docstring defines every column).",
             f"'wanted' = Adam's best lr on the workload / 1e-3, the rule's default lr; this run's lr: {meta['lr']:g}.",
             "",
             "## By workload", "",
             "| workload | wanted | mult, whole run | first / second / last third | learned multiplier alone | "
             "additive term | cos(rule, Adam) | Adam step rms | grad vs its average | result |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for wl, r in res.items():
        s, th = r["summary"]["all"], r["summary"]["thirds"]
        want = WANTED.get(wl, WANTED["suite"])
        third = " / ".join(f"{th[k]['mult']:.2f}" if th[k] else "" for k in ("1/3", "2/3", "3/3"))
        acc = f", acc {100 * r['test_acc']:.2f}%" if r.get("test_acc") else ""
        result = (f"val loss {r['final_val_loss']:.4f}{acc}" if "final_val_loss" in r
                  else f"train loss {r['final_train_loss']:.3g}")
        lines.append(f"| {wl} | {want:g}x | {s['mult']:.2f} | {third} | {s['mult_scale']:.2f} | {s['additive']:.2f} | "
                     f"{s['cos']:.2f} | {s['adam_rms']:.3f} | {s['grad_vs_ema']:.2f} | {result} |")
    for wl in [w for w in res if w in TRANSFORMERS]:
        lines += ["", f"## {wl}, by tensor class", "", "| class | numel (one tensor) | mult | multiplier alone | "
                  "additive | cos | Adam step rms | grad vs its average, first / second / last third |",
                  "|---|---|---|---|---|---|---|---|"]
        summary = res[wl]["summary"]
        for c, s in summary["classes"].items():
            by_third = summary["class_thirds"][c]
            gve = " / ".join(f"{by_third[k]['grad_vs_ema']:.2f}" if by_third[k] else "-"
                             for k in ("1/3", "2/3", "3/3"))
            lines.append(f"| {c} | {s['numel']} | {s['mult']:.2f} | {s['mult_scale']:.2f} | {s['additive']:.2f} | "
                         f"{s['cos']:.2f} | {s['adam_rms']:.3f} | {gve} |")
    return "\n".join(lines) + "\n"


def _figure(res: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(1, 2, figsize=(12, 4.5))
    for wl, r in res.items():
        by_step: dict[int, list] = {}
        for rec in r["records"]:
            by_step.setdefault(rec["step"], []).append(rec)
        xs = sorted(by_step)
        style = "-" if wl in TRANSFORMERS else ":"
        ax[0].plot([x / r["steps"] for x in xs], [_weighted_gm(by_step[x], "mult") for x in xs], style, label=wl)
        ax[1].plot([x / r["steps"] for x in xs], [_weighted_gm(by_step[x], "adam_rms") for x in xs], style, label=wl)
    ax[0].set(yscale="log", xlabel="fraction of the run", ylabel="rms(rule step) / rms(Adam step)",
              title="the rule's multiple of Adam's step")
    ax[1].set(yscale="log", xlabel="fraction of the run", ylabel="rms of Adam's normalized step",
              title="Adam's normalized step (gradient consistency)")
    ax[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def rerender(out: Path) -> None:
    """The summaries, ``step-scale.md`` and ``.png`` again from ``out/step-scale.json``'s records (same meta), e.g.
    after a summary was added to the script. The records were written to 5 significant digits (``compact``), so
    the summaries recomputed from them can differ from the first ones in the fifth digit."""
    path = out / "step-scale.json"
    if not path.is_file():
        raise SystemExit(f"--rerender: no {path}; run the probe first")
    data = json.loads(path.read_text())
    res = data["workloads"]
    if any("records" not in r for r in res.values()):
        raise SystemExit(f"--rerender: {path} was written with --no-records; rerun the probe without it")
    for r in res.values():
        r["summary"] = _summary(r["records"], r["steps"])
    path.write_text(json.dumps({"meta": data["meta"], "workloads": res}) + "\n")
    (out / "step-scale.md").write_text(_md(res, data["meta"]))
    _figure(res, out / "step-scale.png")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", default=None, help="weights to probe (default: the package default)")
    ap.add_argument("--workloads", default=",".join(DEFAULT_WORKLOADS))
    ap.add_argument("--every", type=float, default=0.02, help="probe every this fraction of a run (default 0.02)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lr", type=float, default=1e-3, help="the learned optimizer's lr (default 1e-3, its default)")
    ap.add_argument("--steps", default=None, help="shorter runs, e.g. gpt-byte=600 (the schedule spans the run; "
                    "default: each workload's benchmark length)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--no-records", action="store_true",
                    help="keep only the summaries in the JSON, not every tensor's record (the figure still has them)")
    ap.add_argument("--rerender", action="store_true",
                    help="recompute the summaries, .md and .png from --out's step-scale.json (written with records)")
    args = ap.parse_args()
    if args.rerender:
        rerender(Path(args.out))
        return
    torch.set_num_threads(1)
    workloads = [w for w in args.workloads.split(",") if w]
    bad = [w for w in workloads if w not in TRANSFORMERS and w not in tasks.task_names()]
    if bad:
        raise SystemExit(f"--workloads: unknown {bad}; choose from {', '.join(DEFAULT_WORKLOADS)}")
    if not 0 < args.every <= 1:
        raise SystemExit(f"--every must be in (0, 1], got {args.every}")
    steps = {}
    for item in filter(None, (args.steps or "").split(",")):
        name, _, n = item.partition("=")
        if name not in workloads or not n.isdigit() or int(n) < 1:
            raise SystemExit(f"--steps: expected WORKLOAD=N with a listed workload and N >= 1, got {item!r}")
        steps[name] = int(n)
    if not 0 < args.lr < 1:
        raise SystemExit(f"--lr must be in (0, 1), got {args.lr}")
    res = run(workloads, args.weights, args.every, args.seed, steps, args.lr)
    commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True).stdout.strip()
    meta = {"weights": args.weights or "package default", "seed": args.seed, "lr": args.lr, "commit": commit,
            "command": "python benchmarks/step_scale_by_tensor.py " + " ".join(
                f"--{k.replace('_', '-')}" if v is True else f"--{k.replace('_', '-')} {v}"
                for k, v in vars(args).items() if v is not None and v is not False),
            "machine": f"{platform.processor() or platform.machine()}, {platform.platform()}, "
                       f"torch {torch.__version__}, 1 thread",
            "date": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "step-scale.json").write_text(json.dumps({"meta": meta, "workloads": compact(res, args.no_records)}) + "\n")
    (out / "step-scale.md").write_text(_md(res, meta))
    _figure(res, out / "step-scale.png")
    print(_md(res, meta))


if __name__ == "__main__":
    main()
