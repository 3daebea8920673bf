"""Every learned-optimizer candidate benchmarked on both transformer workloads, side by side.

    python benchmarks/candidate_frontier.py --out benchmarks/results/candidate-frontier

Reads every complete ``transformer.json`` under ``benchmarks/results`` (``--results``), keeps the learned
optimizer's runs at its default lr (1e-3) over seeds 0-4 of the full recipe (gpt-byte 3000 steps, vit-digits
1000), and pairs a candidate's GPT and ViT results by its weights (the weights' name and provenance, so the same
weights benchmarked in two folders count once; when a candidate has several results for a workload, the one run on
the same CPU as its other workload is kept, else the first by path). Writes ``frontier.json``, ``frontier.md`` (one
row per candidate: GPT validation loss and ViT test accuracy, means over seeds 0-4, the CPU each ran on, the
folders) and ``frontier.png`` (ViT accuracy against GPT loss, tuned AdamW marked), and the rank correlation
between the two metrics over the candidates: whether the candidates that do better on one workload do worse on the
other (a trade-off no choice among them escapes) or better on both.

Figures from different CPUs differ by up to ~0.01 nats/byte and ~0.5 points for the same weights (the C loop's
rounding differs between AVX2 and AVX-512 builds), so two candidates closer than that are not told apart here.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
STEPS = {"gpt-byte": 3000, "vit-digits": 1000}
SEEDS = [0, 1, 2, 3, 4]
DEFAULT_LR = 1e-3
XMAX, YMIN = 1.78, 94.5  # the plot's window (candidates beyond it are counted in its title)


def _cpu(machine: dict) -> str:
    return " ".join(x for x in (machine.get("cpu"), machine.get("cpu_id")) if x) or "?"


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _se(values: list[float]) -> float:
    """The standard error of the mean (sample standard deviation / sqrt(n))."""
    m = _mean(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1) / len(values))


def _seed_values(run: dict, name: str) -> list[float]:
    """A run's metric over seeds 0-4: test accuracy in % on vit-digits, final validation loss otherwise."""
    idx = [run["seeds"].index(s) for s in SEEDS]
    return [run["test_acc"][i] * 100 for i in idx] if name == "vit-digits" else [run["final"][i] for i in idx]


def _weights_key(weights: dict) -> str:
    blob = json.dumps({"name": weights.get("name"), "provenance": weights.get("provenance")}, sort_keys=True,
                      default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def rows_of(path: Path, results_root: Path) -> list[dict]:
    """One row per workload of ``path`` with learned runs at the default lr over seeds 0-4 (full recipe)."""
    d = json.loads(path.read_text())
    if d.get("benchmark") != "transformer" or not d.get("complete") or d.get("settings", {}).get("quick"):
        return []
    out = []
    for name, wl in d.get("workloads", {}).items():
        if wl.get("steps") != STEPS.get(name):
            continue
        runs = [r for r in wl["runs"].values() if r["optimizer"] == "learned" and math.isclose(r["lr"], DEFAULT_LR)]
        if not runs or not set(SEEDS) <= set(runs[0]["seeds"]):
            continue
        r = runs[0]
        values = _seed_values(r, name)
        out.append({"workload": name, "value": _mean(values), "se": _se(values),
                    "diverged": sum(bool(r["diverged"][r["seeds"].index(s)]) for s in SEEDS),
                    "weights": d["weights"].get("name"), "key": _weights_key(d["weights"]),
                    "cpu": _cpu(d.get("machine", {})),
                    "path": str(path.parent.relative_to(results_root))})
    return out


def adamw_of(path: Path, name: str, lr: float) -> float | None:
    """AdamW's mean over seeds 0-4 at ``lr`` in ``path`` (None where absent)."""
    wl = json.loads(path.read_text()).get("workloads", {}).get(name)
    for r in (wl or {}).get("runs", {}).values():
        if r["optimizer"] == "adamw" and math.isclose(r["lr"], lr) and set(SEEDS) <= set(r["seeds"]):
            return _mean(_seed_values(r, name))
    return None


def spearman(xs: list[float], ys: list[float]) -> float:
    def ranks(v):
        order = sorted(range(len(v)), key=lambda i: v[i])
        out = [0.0] * len(v)
        for rank, i in enumerate(order):
            out[i] = float(rank)
        return out

    rx, ry = ranks(xs), ranks(ys)
    mx, my = _mean(rx), _mean(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    return cov / math.sqrt(sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--default", default=None, help="the weights name to mark as the shipped default "
                    "(default: learned_optim.hub.DEFAULT_WEIGHTS)")
    args = ap.parse_args()
    if args.default is None:
        from learned_optim.hub import DEFAULT_WEIGHTS

        args.default = DEFAULT_WEIGHTS
    files = sorted(args.results.rglob("transformer.json"))
    by_key: dict[str, dict[str, list[dict]]] = {}
    for f in files:
        for row in rows_of(f, args.results):
            by_key.setdefault(row["key"], {}).setdefault(row["workload"], []).append(row)
    cands = []
    for key, wls in by_key.items():
        if set(wls) != set(STEPS):
            continue
        gpts, vits = wls["gpt-byte"], wls["vit-digits"]
        same = [(g, v) for g in gpts for v in vits if g["cpu"] == v["cpu"]]
        g, v = same[0] if same else (gpts[0], vits[0])
        cands.append({"weights": g["weights"], "key": key, "is_default": g["weights"] == args.default,
                      "gpt": g["value"], "gpt_se": g["se"], "vit": v["value"], "vit_se": v["se"],
                      "diverged": g["diverged"] + v["diverged"],
                      "gpt_cpu": g["cpu"], "vit_cpu": v["cpu"], "gpt_path": g["path"], "vit_path": v["path"],
                      "results_per_workload": [len(gpts), len(vits)]})
    cands.sort(key=lambda c: c["gpt"])
    ref = args.results / "ten-seeds"
    adamw = {"gpt": adamw_of(ref / "default-gpt-byte" / "transformer.json", "gpt-byte", 3e-3),
             "vit": adamw_of(ref / "default-vit-digits" / "transformer.json", "vit-digits", 3e-4)}
    rho = spearman([c["gpt"] for c in cands], [c["vit"] for c in cands]) if len(cands) > 2 else float("nan")
    both = [c for c in cands if c["gpt"] <= adamw["gpt"] and c["vit"] >= adamw["vit"] - 1.0]
    for c in cands:  # on the front: no other candidate is at least as good on both and better on one
        c["pareto"] = not any(o["gpt"] <= c["gpt"] and o["vit"] >= c["vit"] and (o["gpt"], o["vit"]) != (
            c["gpt"], c["vit"]) for o in cands)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "frontier.json").write_text(json.dumps(
        {"command": "python benchmarks/candidate_frontier.py " + " ".join(sys.argv[1:]), "files_read": len(files),
         "tuned_adamw_seeds_0_4": adamw, "spearman_gpt_loss_vs_vit_acc": rho, "meeting_both_targets": len(both),
         "candidates": cands}, indent=2))

    lines = ["# Candidates on both transformer workloads", "",
             f"{len(cands)} learned-optimizer weights with complete runs at lr 1e-3 over seeds 0-4 of both workloads, "
             f"from {len(files)} `transformer.json` files under `benchmarks/results` "
             "(`python benchmarks/candidate_frontier.py`). Tuned AdamW over the same seeds "
             f"(`ten-seeds`): gpt-byte {adamw['gpt']:.4f} nats/byte (lr 3e-3), "
             f"vit-digits {adamw['vit']:.2f}% (lr 3e-4). "
             f"Spearman rank correlation of GPT loss and ViT accuracy over the candidates: **{rho:+.2f}** "
             "(positive: a candidate with a lower GPT loss tends to have a lower ViT accuracy). Candidates meeting "
             f"both targets (GPT at or below tuned AdamW, ViT within 1 point of it): **{len(both)}**.", "",
             "The front (no other candidate as good on both workloads and better on one), by GPT loss: "
             + "; ".join(f"{c['weights']} ({c['gpt']:.4f}, {c['vit']:.2f}%)" for c in cands if c["pareto"]) + ".", "",
             "Means over seeds 0-4 ± their standard error (the seeds' standard deviation / sqrt(5)); the same "
             "weights on different CPUs can differ by more than that.", "",
             "| weights | gpt-byte val loss | vit-digits test acc | diverged runs | CPU (GPT; ViT) "
             "| folders (GPT; ViT) |",
             "|---|---|---|---|---|---|"]
    for c in cands:
        name = c["weights"] + (" (the shipped default)" if c["is_default"] else "")
        cpu = c["gpt_cpu"] if c["gpt_cpu"] == c["vit_cpu"] else f"{c['gpt_cpu']}; {c['vit_cpu']}"
        lines.append(f"| {name} | {c['gpt']:.4f} ± {c['gpt_se']:.4f} | {c['vit']:.2f}% ± {c['vit_se']:.2f} | "
                     f"{c['diverged']} | {cpu} | "
                     f"{c['gpt_path']}; {c['vit_path']} |")
    (args.out / "frontier.md").write_text("\n".join(lines) + "\n")

    fig, ax = plt.subplots(figsize=(7.5, 5.5))
    ax.scatter([c["gpt"] for c in cands], [c["vit"] for c in cands], s=22, color="C0", label="learned candidates")
    front = [c for c in cands if c["pareto"]]
    ax.plot([c["gpt"] for c in front], [c["vit"] for c in front], color="C0", lw=0.8, label="the front")
    for c in cands:
        if c["is_default"]:
            ax.scatter([c["gpt"]], [c["vit"]], s=70, facecolors="none", edgecolors="C3", linewidths=1.5)
    ax.scatter([adamw["gpt"]], [adamw["vit"]], marker="*", s=160, color="C2", label="tuned AdamW")
    ax.axvline(adamw["gpt"], color="C2", lw=0.8, ls="--")
    ax.axhline(adamw["vit"] - 1.0, color="C2", lw=0.8, ls=":", label="ViT target (tuned AdamW - 1 point)")
    # the bulk of the candidates; the few far behind on either workload are left off the scale
    near = [c for c in cands if c["gpt"] <= XMAX and c["vit"] >= YMIN]
    ax.set_xlim(min([adamw["gpt"]] + [c["gpt"] for c in near]) - 0.005, XMAX)
    ax.set_ylim(YMIN, max([adamw["vit"]] + [c["vit"] for c in near]) + 0.3)
    ax.set_xlabel("gpt-byte validation nats/byte, mean of seeds 0-4 (lower is better)")
    ax.set_ylabel("vit-digits test accuracy %, mean of seeds 0-4")
    ax.set_title(f"{len(cands)} candidates (the shipped default circled; {len(cands) - len(near)} off scale); "
                 f"Spearman {rho:+.2f}", fontsize=10)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out / "frontier.png", dpi=110)


if __name__ == "__main__":
    main()
