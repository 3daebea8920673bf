"""Tables and a figure from the JSON reports of gpu_check.py and gpu_step_profile.py.

    python benchmarks/gpu_report.py benchmarks/results/gpu-h200/run*.json --out benchmarks/results/gpu-h200

Writes ``report.md`` (every row of every report, one table per report, with its command and
machine) and ``report.png`` (left: the Triton kernel's time per call at 1e8 parameters by
(BLOCK, num_warps), one point per pass; right: the eager loop's step by chunk size).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

SWEEP = re.compile(r"(?:fused|sweep) (\w+)/(\w+) BLOCK=(\d+) num_warps=(\d+)")
CHUNK = re.compile(r"learned eager step, chunk_size 2\^(\d+)")


def ms(text: str) -> float:
    return float(text.split()[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("reports", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    lines, sweep, chunks = ["# GPU reports: every row", ""], {}, {}
    for path in args.reports:
        rep = json.loads(path.read_text())
        m = rep["machine"]
        lines += [f"## {path.name}", "", f"Command: `{rep['command']}`  ", f"Machine: {m.get('cpu')}, CUDA "
                  f"{m.get('cuda')}, torch {m.get('torch')}, Python {m.get('python')}", "",
                  "| check | result | detail |", "|---|---|---|"]
        for r in rep["rows"]:
            cells = (r["check"], r["result"], r["detail"])
            lines.append("| " + " | ".join(x.strip().replace("|", "\\|") for x in cells) + " |")
            s = SWEEP.search(r["check"])
            if s:
                key = (f"{s[1]}/{s[2]}", f"{s[3]}/{s[4]}")
                passes = re.findall(r"[\d.]+", r["detail"].removeprefix("passes")) if "passes" in r["detail"] else []
                sweep.setdefault(key, []).extend(float(x) for x in (passes or [ms(r["result"])]))
            c = CHUNK.search(r["check"])
            if c:
                chunks[int(c[1])] = ms(r["result"])
        lines.append("")
    (args.out / "report.md").write_text("\n".join(lines))

    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(12, 4.5))
    pairs = sorted({k[0] for k in sweep if not k[0].startswith("float64")})  # fp64: 2-4x longer, off scale
    launches = sorted({k[1] for k in sweep}, key=lambda s: tuple(int(x) for x in s.split("/")))
    for j, pair in enumerate(pairs):
        for i, launch in enumerate(launches):
            ys = sweep.get((pair, launch), [])
            ax0.scatter([i + 0.2 * (j - 1)] * len(ys), ys, color=f"C{j}", s=18, label=pair if i == 0 else None)
    ax0.set_xticks(range(len(launches)), launches, rotation=45)
    ax0.set_xlabel("BLOCK / num_warps")
    ax0.set_ylabel("ms per call (CUDA events), 1e8 parameters")
    ax0.set_ylim(3.5, 6)
    ax0.set_title("Triton kernel by launch (param/state), every pass; 512/2, fp64 off scale")
    ax0.legend()
    if chunks:
        xs = sorted(chunks)
        ax1.plot(xs, [chunks[x] for x in xs], "o-")
        ax1.set_yscale("log")
        ax1.set_xlabel("log2 chunk_size")
        ax1.set_ylabel("ms per step (back-to-back)")
        ax1.set_title("eager loop on the GPU, 1e8 parameters")
    fig.tight_layout()
    fig.savefig(args.out / "report.png", dpi=110)


if __name__ == "__main__":
    main()
