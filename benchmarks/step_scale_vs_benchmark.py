"""Do the benchmarked points differ in how large their steps are, and does that rank their benchmark results?

For every point probed by ``step_scale_by_tensor.py`` into ``benchmarks/results/step-scale/points/NAME`` (NAME: the
point's folder in ``benchmarks/results/meta-v2``, ``screening-X`` for ``meta-v2/screening/X``; ``t32-step400`` is the
shipped default; a probe without such a folder, e.g. ``lstm-h4-v1``, is listed without figures), this joins the
rule's step multiple of Adam's on each probed workload (``mult`` of the probe) with the point's committed benchmark
figures (read as ``selection_vs_benchmark.figures`` reads them) and prints Spearman's rank correlation of each
multiple with each figure over the points that have both.

    python benchmarks/step_scale_vs_benchmark.py --out benchmarks/results/step-scale

Reads only committed files; writes ``step-scale-vs-benchmark.json``, ``.md`` and ``.png`` into ``--out``.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
POINTS_DIR = HERE / "results" / "step-scale" / "points"
META = HERE / "results" / "meta-v2"
# the probe's figures: (label, workload, which part of the run)
MULTS = {"c_gpt": ("GPT (600-step run)", "gpt-byte", "all"), "c_vit": ("ViT", "vit-digits", "all"),
         "c_vit_late": ("ViT, last third", "vit-digits", "3/3"), "c_wine": ("wine_mlp", "wine_mlp", "all"),
         "c_shapes": ("shapes_cnn", "shapes_cnn", "all"),
         "c_long_late": ("breast_cancer_mlp_long, last third", "breast_cancer_mlp_long", "3/3")}
PAIRS = [("c_gpt", "gpt"), ("c_vit", "vit"), ("c_vit_late", "vit"), ("c_wine", "suite_median"),
         ("c_shapes", "suite_median"), ("c_long_late", "suite_median"), ("c_gpt", "suite_median"),
         ("c_vit", "suite_median")]


@functools.cache  # the study's readers and its Spearman, loaded once
def _selection_module():
    spec = importlib.util.spec_from_file_location("selection_vs_benchmark", HERE / "selection_vs_benchmark.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def collect() -> list[dict]:
    svb = _selection_module()
    rows = []
    for probe in sorted(POINTS_DIR.glob("*/step-scale.json")):
        name = probe.parent.name
        wl = json.loads(probe.read_text())["workloads"]
        row = {"point": name}
        for key, (_, workload, part) in MULTS.items():
            if workload in wl:
                s = wl[workload]["summary"]
                row[key] = (s["all"] if part == "all" else s["thirds"][part])["mult"]
        folder = f"screening/{name[len('screening-'):]}" if name.startswith("screening-") else name
        if (META / folder).is_dir():
            parts = [f"{folder}/{w}" for w in ("gpt-byte", "vit-digits", "quality")]
            row.update(svb.figures(*[p if (META / p).is_dir() else None for p in parts]))
        rows.append(row)
    return rows


def correlations(rows: list[dict]) -> dict[str, dict]:
    svb = _selection_module()
    out = {}
    for mult, fig in PAIRS:
        have = [r for r in rows if mult in r and fig in r]
        if len(have) >= 5:
            out[f"{mult} vs {fig}"] = {"n": len(have),
                                       "rho": svb.spearman([r[mult] for r in have], [r[fig] for r in have])}
    return out


def _md(rows: list[dict], corr: dict[str, dict]) -> str:
    lines = ["# The points' step multiples of Adam against their benchmark results", "",
             "Command: `python benchmarks/step_scale_vs_benchmark.py --out benchmarks/results/step-scale` (reads",
             "the probes in `points/` and the benchmark folders of `../meta-v2`). Step multiple = rms(rule step) /",
             "rms(Adam's normalized step), numel-weighted geometric mean over tensors and probes",
             "(`step_scale_by_tensor.py`); one seed per workload; the GPT probe is a 600-step run of the GPT workload",
             "(the benchmark runs 3000).", "",
             "| point | " + " | ".join(label for label, _, _ in MULTS.values())
             + " | gpt-byte (5 seeds) | vit-digits % | suite median |",
             "|---" * (len(MULTS) + 4) + "|"]
    for r in rows:
        cells = [f"{r[k]:.2f}" if k in r else "" for k in MULTS]
        figs = [f"{r['gpt']:.4f}" if "gpt" in r else "", f"{r['vit']:.2f}" if "vit" in r else "",
                f"{r['suite_median']:.2f}" if "suite_median" in r else ""]
        lines.append(f"| {r['point']} | " + " | ".join(cells + figs) + " |")
    lines += ["", "Spearman's rank correlation over the points with both figures (lower is better for gpt-byte and",
              "the suite's median, higher for vit-digits accuracy); 'needed': |rho| for the 5% level, two-sided, by",
              "the large-sample approximation 1.96 / sqrt(n - 1):", "",
              "| step multiple vs figure | n | rho | needed |", "|---|---|---|---|"]
    lines += [f"| {k} | {v['n']} | {v['rho']:+.2f} | {1.96 / (v['n'] - 1) ** 0.5:.2f} |" for k, v in corr.items()]
    return "\n".join(lines) + "\n"


def _figure(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(1, 3, figsize=(14, 4.2))
    for a, (mult, fig_key, label) in zip(ax, [("c_gpt", "gpt", "gpt-byte validation loss"),
                                              ("c_vit_late", "vit", "vit-digits test accuracy (%)"),
                                              ("c_long_late", "suite_median", "suite median / tuned Adam")]):
        have = [r for r in rows if mult in r and fig_key in r]
        a.scatter([r[mult] for r in have], [r[fig_key] for r in have])
        for r in have:
            a.annotate(r["point"], (r[mult], r[fig_key]), fontsize=5)
        a.set(xlabel=f"{MULTS[mult][0]}: step multiple of Adam", ylabel=label, xscale="log")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    rows = collect()
    if not rows:
        raise SystemExit(f"no probes in {POINTS_DIR}: run step_scale_by_tensor.py --out {POINTS_DIR}/NAME first")
    corr = correlations(rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "step-scale-vs-benchmark.json").write_text(json.dumps({"rows": rows, "spearman": corr}, indent=1) + "\n")
    (out / "step-scale-vs-benchmark.md").write_text(_md(rows, corr))
    _figure(rows, out / "step-scale-vs-benchmark.png")
    print(_md(rows, corr))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
