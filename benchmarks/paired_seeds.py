"""Pair two methods' final losses seed by seed, gathering their runs from several result files.

The transformer benchmark writes a method's seeds into one ``transformer.json``; runs added later for more seeds
come from ``benchmarks/cautious_probe.py`` as JSON lines (the benchmark's own ``train_once``, so a seed's run is the
same in both). This script collects a reference's and a candidate's final validation losses by seed from any mix of
the two, pairs the seeds both have, and reports each side's mean and the paired difference with its standard error
and two-sided exact sign-flip p-value (``learned_optim.benchmarking.paired.paired_test``, as ``learned-optim
benchmark compare``). A seed found twice for one side must give the same loss (the runs are deterministic), else it
is an error.

A source is ``FILE`` (every run in a JSON-lines file), ``FILE@METHOD`` (JSON lines whose ``method`` is METHOD, e.g.
``adamw``) or ``FILE@RUN`` (a ``transformer.json`` run key such as ``learned_lr=0.001`` or ``adamw_lr=0.003``; the
workload is ``--workload``)::

    python benchmarks/paired_seeds.py --workload gpt-byte --out OUT \\
        --reference benchmarks/results/cautious/gpt-adamw-here.jsonl@adamw --reference runs/adamw.jsonl@adamw \\
        --candidate benchmarks/results/cautious/gpt-byte/transformer.json@learned_lr=0.001 \\
        --candidate runs/learned.jsonl@learned

Writes ``paired.json`` and ``paired.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

try:
    import learned_optim  # noqa: F401
except ImportError:  # a checkout that is not pip-installed: use the package next to this folder
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from learned_optim.benchmarking.paired import paired_test  # noqa: E402


def load(source: str, workload: str) -> dict[int, float]:
    """Final loss by seed from one source (see the module docstring)."""
    path, _, key = source.partition("@")
    text = Path(path).read_text(encoding="utf-8")
    if path.endswith(".jsonl"):
        runs = [json.loads(line) for line in text.splitlines() if line.strip()]
        return {int(r["seed"]): float(r["final"]) for r in runs
                if r.get("workload", workload) == workload and (not key or r["method"] == key)}
    runs = json.loads(text)["workloads"][workload]["runs"]
    if key not in runs:
        raise ValueError(f"{source}: no run {key!r} for {workload}; it has {', '.join(runs)}")
    return {int(s): float(f) for s, f in zip(runs[key]["seeds"], runs[key]["final"])}


def gather(sources: list[str], workload: str) -> dict[int, float]:
    out: dict[int, float] = {}
    for src in sources:
        for seed, final in load(src, workload).items():
            if seed in out and out[seed] != final:
                raise ValueError(f"seed {seed} has two different final losses ({out[seed]} and {final}); "
                                 f"the sources are not the same runs")
            out[seed] = final
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workload", required=True)
    ap.add_argument("--reference", action="append", required=True, help="a source of the reference's runs")
    ap.add_argument("--candidate", action="append", required=True, help="a source of the candidate's runs")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    ref, cand = gather(args.reference, args.workload), gather(args.candidate, args.workload)
    seeds = sorted(set(ref) & set(cand))
    if not seeds:
        raise ValueError("no seed is in both the reference's and the candidate's runs")
    test = paired_test([cand[s] - ref[s] for s in seeds])
    res = {"command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *(argv or sys.argv[1:])]),
           "date": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()), "workload": args.workload,
           "reference_sources": args.reference, "candidate_sources": args.candidate, "seeds": seeds,
           "reference": [ref[s] for s in seeds], "candidate": [cand[s] for s in seeds], "paired": test}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "paired.json").write_text(json.dumps(res, indent=1) + "\n", encoding="utf-8")

    def mean_sd(xs: list[float]) -> str:
        return f"{statistics.mean(xs):.4f} ± {statistics.stdev(xs):.4f}" if len(xs) > 1 else f"{xs[0]:.4f}"
    lines = [f"# Paired by seed: {args.workload}", "",
             f"Command: `{res['command']}`  ", f"Date (UTC): {res['date']}; seeds {seeds[0]}-{seeds[-1]} "
             f"({len(seeds)} paired).", "",
             "| side | sources | final loss, mean ± std |", "|---|---|---|",
             f"| reference | {', '.join(f'`{s}`' for s in args.reference)} | {mean_sd(res['reference'])} |",
             f"| candidate | {', '.join(f'`{s}`' for s in args.candidate)} | {mean_sd(res['candidate'])} |", "",
             f"Candidate minus reference: {test['mean']:+.4f} ± {test['se']:.4f} (standard error), lower on "
             f"{test['lower']} of {test['n']} seeds, higher on {test['higher']}; two-sided exact sign-flip p "
             f"{test['p']:.3g}.", ""]
    for name, part in (("first", seeds[: len(seeds) // 2]), ("second", seeds[len(seeds) // 2:])):
        if part and len(seeds) > 1:
            d = [cand[s] - ref[s] for s in part]
            lines.append(f"- the {name} half of the seeds ({part[0]}-{part[-1]}): reference "
                         f"{statistics.mean(ref[s] for s in part):.4f}, candidate "
                         f"{statistics.mean(cand[s] for s in part):.4f}, difference {statistics.mean(d):+.4f}")
    (out / "paired.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
