"""``learned-optim benchmark compare``: two results of one benchmark, seed by seed.

Two weights (or two code versions) benchmarked under the same settings see the same
initialisations and minibatches at each seed, so their difference is best read per seed. For
each task (quality benchmark) or workload (transformer benchmark) this pairs the learned
optimizer's runs of a *reference* and a *candidate* result at their common seeds and reports

* the paired differences ``d_i``: ``log(candidate / reference)`` of the final training loss and,
  where both have it, of the held-out loss (quality); ``candidate - reference`` of the final
  validation loss and of the test accuracy (transformer);
* their mean and standard error ``sd(d) / sqrt(n)``, and the seeds on each side;
* the two-sided p-value of the exact sign-flip test of a zero mean (``paired.paired_test``; with
  5 seeds it cannot fall below 0.0625, so 5 seeds never call a difference; 10 seeds can);
* a verdict: the side with the lower loss (higher accuracy) when ``p < ALPHA``, else "within
  noise". A run that diverged (non-finite loss) loses its pair; pairs where both diverged are
  left out, and the counts are reported.

It answers "is B better than A on this benchmark", which two tables' means cannot when the seeds'
spread is as large as the difference, and when a chaotic task amplifies the last bit of a change
(a different CPU, one more context column) into a different suite summary.

Example::

    learned-optim benchmark compare OLD/quality/quality.json NEW/quality/quality.json --out cmp
    learned-optim benchmark compare OLD/gpt-byte/transformer.json NEW/gpt-byte/transformer.json --out cmp

Writes ``compare.json``, ``compare.md`` and ``compare.png`` in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
from pathlib import Path
from typing import Any, Iterator, Sequence

from ..common.files import atomic_write_text
from ..common.machine import machine_line
from .common import DEFAULT_OUT, check_no_overwrite, check_out_dir, save_figure
from .paired import ALPHA, paired_outcome
from .quality_stats import _log_ratio, _mean

__all__ = ["OUTPUT_FILES", "compare_results", "compare_markdown", "run_compare", "add_cli_arguments", "run_cli"]

_PROG = "learned-optim benchmark compare"
OUTPUT_FILES = ("compare.json", "compare.md", "compare.png")


def _check_results(res: Any, which: str) -> str:
    if not isinstance(res, dict) or res.get("benchmark") not in ("quality", "transformer"):
        raise ValueError(f"{which} is not a quality.json or transformer.json written by `learned-optim benchmark`; "
                         f"pass the JSON file of a quality or transformer benchmark run")
    return res["benchmark"]


def _common_seeds(ref_seeds: Sequence[int], cand_seeds: Sequence[int]) -> tuple[list[int], list[int], list[int]]:
    """Indices into each run's seed list for the seeds both have, and those seeds."""
    common = [s for s in ref_seeds if s in set(cand_seeds)]
    return [list(ref_seeds).index(s) for s in common], [list(cand_seeds).index(s) for s in common], common


def _pick(values: Sequence[Any], idx: Sequence[int]) -> list[Any]:
    return [values[i] for i in idx]


def _matched(ref_units: dict, cand_units: dict, kind: str, skipped: list[str]) -> Iterator[tuple[str, dict, dict]]:
    """The (name, reference, candidate) tasks or workloads both results have; the others go to
    ``skipped``. Raises ValueError where the two ran a different number of steps."""
    for name, r in ref_units.items():
        c = cand_units.get(name)
        if c is None:
            skipped.append(f"{name} (only in the reference)")
            continue
        if r["steps"] != c["steps"]:
            raise ValueError(f"{kind} {name!r} ran {r['steps']} steps in the reference and {c['steps']} in the "
                             f"candidate; compare results made with the same settings (the same --steps, both "
                             f"--quick or neither)")
        yield name, r, c
    skipped += [f"{n} (only in the candidate)" for n in cand_units if n not in ref_units]


def _row(name: str, steps: int, ref_run: dict, cand_run: dict, ref_seeds: Sequence[int], cand_seeds: Sequence[int],
         second: str, diff, second_diff, second_higher_is_better: bool) -> dict[str, Any]:
    """One compared row: the final loss (``diff``) and, where both runs have it, ``second``."""
    ri, ci, seeds = _common_seeds(ref_seeds, cand_seeds)
    row = {"name": name, "steps": steps, "seeds": seeds,
           "reference_mean": _mean(_pick(ref_run["final"], ri)) if seeds else math.nan,
           "candidate_mean": _mean(_pick(cand_run["final"], ci)) if seeds else math.nan,
           "final": paired_outcome(_pick(ref_run["final"], ri), _pick(cand_run["final"], ci), diff)}
    key = {"heldout": "heldout_final", "test_acc": "test_acc"}[second]
    # The GPT records no accuracy (a list of None): no such row then.
    if any(v is not None for v in ref_run.get(key) or ()) and any(v is not None for v in cand_run.get(key) or ()):
        row[second] = paired_outcome(_pick(ref_run[key], ri), _pick(cand_run[key], ci), second_diff,
                                     higher_is_better=second_higher_is_better)
    return row


def _log_diff(r: float, c: float) -> float:
    return _log_ratio(c, r)


def _quality_rows(ref: dict, cand: dict) -> tuple[list[dict], list[str]]:
    rows: list[dict] = []
    skipped: list[str] = []
    for task, rt, ct in _matched(ref["tasks"], cand["tasks"], "task", skipped):
        rows.append(_row(task, rt["steps"], rt["runs"]["learned"], ct["runs"]["learned"], ref["settings"]["seeds"],
                         cand["settings"]["seeds"], "heldout", _log_diff, _log_diff, False))
    return rows, skipped


def _transformer_rows(ref: dict, cand: dict) -> tuple[list[dict], list[str]]:
    rows: list[dict] = []
    skipped: list[str] = []
    for name, rw, cw in _matched(ref["workloads"], cand["workloads"], "workload", skipped):
        for key, rr in rw["runs"].items():
            cr = cw["runs"].get(key)
            if rr["optimizer"] == "learned" and cr is None:
                skipped.append(f"{name}, learned lr {rr['lr']:g} (only in the reference)")
            elif rr["optimizer"] == "learned":
                rows.append(_row(f"{name}, lr {rr['lr']:g}", rw["steps"], rr, cr, rr["seeds"], cr["seeds"],
                                 "test_acc", lambda r, c: c - r, lambda r, c: 100.0 * (c - r), True))
        skipped += [f"{name}, learned lr {cr['lr']:g} (only in the candidate)" for key, cr in cw["runs"].items()
                    if cr["optimizer"] == "learned" and key not in rw["runs"]]
    return rows, skipped


def _weights_name(res: dict) -> str:
    w = res.get("weights") or {}
    return str(w.get("name") or w.get("path") or "?")


def compare_results(reference: dict[str, Any], candidate: dict[str, Any]) -> dict[str, Any]:
    """Pair the learned runs of two results of the same benchmark (see the module docstring).

    Args:
        reference: a quality.json or transformer.json dict (the baseline of the comparison).
        candidate: a dict of the same benchmark, made with the same settings.

    Returns:
        ``{"benchmark", "rows": [{"name", "steps", "seeds", "reference_mean", "candidate_mean",
        "final": test, ["heldout" | "test_acc"]: test}], "skipped", "counts", "reference",
        "candidate"}``, each test as ``paired_test`` plus divergence counts and ``"verdict"``
        ("candidate", "reference" or "within noise").

    Raises:
        ValueError: not benchmark results, two different benchmarks, different step counts, or a file missing
            the fields its benchmark writes.
    """
    kind = _check_results(reference, "reference")
    if _check_results(candidate, "candidate") != kind:
        raise ValueError(f"reference is a {kind} result and candidate a {candidate['benchmark']} result; "
                         f"compare two results of the same benchmark")
    try:
        rows, skipped = (_quality_rows if kind == "quality" else _transformer_rows)(reference, candidate)
    except (KeyError, TypeError, IndexError) as e:
        raise ValueError(f"reference or candidate is not a well-formed {kind}.json ({type(e).__name__}: {e}); pass "
                         f"files written by `learned-optim benchmark {kind}`") from None
    if not rows:
        raise ValueError("reference and candidate share no task or workload with learned-optimizer runs; "
                         "compare results of the same tasks")
    counts = {}
    for metric in ("final", "heldout", "test_acc"):
        tests = [r[metric] for r in rows if metric in r]
        if tests:
            counts[metric] = {v: sum(t["verdict"] == v for t in tests) for v in ("candidate", "within noise",
                                                                                  "reference")}
    side = {}
    for label, res in (("reference", reference), ("candidate", candidate)):
        side[label] = {"weights": _weights_name(res), "command": res.get("command", ""),
                       "machine": res.get("machine") or {}}
        if kind == "quality" and "totals" in res:
            t = res["totals"]
            side[label]["suite"] = {"wins_vs_adam_suite": t["adam_suite"]["tasks_won"],
                                    "median_ratio_to_adam_tuned": t["adam_tuned"]["median_loss_ratio"],
                                    "geomean_ratio_to_adam_tuned": t["geomean_ratio_to_adam_tuned"]["learned"],
                                    "tasks": len(res["tasks"])}
    return {"benchmark": kind, "alpha": ALPHA, "rows": rows, "skipped": skipped, "counts": counts, **side}


def _num(x: float, digits: int = 3) -> str:
    return f"{x:.{digits}g}" if math.isfinite(x) else "nan"


def _test_cell(t: dict, unit: str) -> str:
    if not t["n"]:
        return "no finite pairs"
    cell = f"{t['mean']:+.3g} ± {_num(t['se'], 2)}{unit} (p {t['p']:.3g}; {t['lower']} lower, {t['higher']} higher)"
    div = [f"{t[k]} {k.split('_')[0]}" for k in ("candidate_only_diverged", "reference_only_diverged",
                                                  "both_diverged") if t[k]]
    return (cell + (f"; diverged: {', '.join(div)}" if div else "")
            + (f"; {t['infinite_ratio']} pairs with a loss of exactly 0 left out" if t["infinite_ratio"] else ""))


def _machine(m: dict) -> str:
    try:
        return machine_line(m)
    except KeyError:  # a result written before every machine field was recorded
        return str(m.get("cpu", "unknown CPU"))


def _verdict(t: dict) -> str:
    return {"candidate": "**candidate**", "reference": "**reference**"}.get(t["verdict"], "within noise")


def compare_markdown(comp: dict[str, Any]) -> str:
    """The comparison as Markdown: what was compared, one row per task or workload, the counts."""
    quality = comp["benchmark"] == "quality"
    lines = ["# Paired comparison of two benchmark results", ""]
    for label in ("reference", "candidate"):
        s = comp[label]
        lines.append(f"- **{label}**: weights `{s['weights']}`; command `{s['command']}`"
                     + (f"; machine: {_machine(s['machine'])}" if s["machine"] else ""))
    rm, cm = comp["reference"]["machine"], comp["candidate"]["machine"]
    if rm.get("cpu_id", rm.get("cpu")) != cm.get("cpu_id", cm.get("cpu")):
        lines.append("- ⚠ the two results come from different CPUs: float rounding differs, and chaotic tasks "
                     "may differ by more than the weights do")
    lines += ["", f"Per seed, the candidate against the reference (same initialisation and minibatches); mean ± "
              f"standard error over the seeds both ran; p: two-sided exact sign-flip test; a side is named when p < "
              f"{comp['alpha']:g} (with 5 seeds p cannot fall below 0.0625), and a side that diverged on more seeds "
              f"loses. "
              + ("Differences are log(candidate / reference) of the final loss: negative = the candidate lower."
                 if quality else "Differences are candidate − reference: validation loss in nats (negative = the "
                 "candidate lower), test accuracy in points (positive = the candidate higher)."), ""]
    second, unit2 = ("heldout", "") if quality else ("test_acc", " pt")
    head = ["task" if quality else "workload", "seeds", "reference mean", "candidate mean",
            "final loss: paired difference", "verdict"]
    has_second = any(second in r for r in comp["rows"])
    if has_second:
        head += [f"{'held-out loss' if quality else 'test accuracy'}: paired difference", "verdict"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in comp["rows"]:
        cells = [r["name"], str(len(r["seeds"])), _num(r["reference_mean"], 4), _num(r["candidate_mean"], 4),
                 _test_cell(r["final"], ""), _verdict(r["final"])]
        if has_second:
            cells += [_test_cell(r[second], unit2), _verdict(r[second])] if second in r else ["", ""]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [""]
    names = {"final": "final loss", "heldout": "held-out loss", "test_acc": "test accuracy"}
    for metric, c in comp["counts"].items():
        lines.append(f"- {names[metric]}: candidate better on {c['candidate']}, within noise on "
                     f"{c['within noise']}, reference better on {c['reference']}")
    if quality and "suite" in comp["reference"] and "suite" in comp["candidate"]:
        lines += ["", "Each result's own suite summary (each against the baselines in its own file):", "",
                  "| | wins vs Adam, best single lr | median ratio to Adam tuned | geometric mean ratio |",
                  "|---|---|---|---|"]
        for label in ("reference", "candidate"):
            s = comp[label]["suite"]
            lines.append(f"| {label} | {s['wins_vs_adam_suite']}/{s['tasks']} | "
                         f"{_num(s['median_ratio_to_adam_tuned'])} | {_num(s['geomean_ratio_to_adam_tuned'])} |")
    if comp["skipped"]:
        lines += ["", f"Not compared: {', '.join(comp['skipped'])}."]
    lines += ["", "Figure: `compare.png` (mean ± 2 standard errors per row, coloured by the sign-flip verdict); every "
              "pair: `compare.json`."]
    return "\n".join(lines) + "\n"


def _plot(comp: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    quality = comp["benchmark"] == "quality"
    panels = [("final", "final loss: log(candidate / reference)" if quality else "final validation loss: "
               "candidate − reference (nats)")]
    second = "heldout" if quality else "test_acc"
    if any(second in r for r in comp["rows"]):
        panels.append((second, "held-out loss: log(candidate / reference)" if quality else
                       "test accuracy: candidate − reference (points)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 0.45 * len(comp["rows"]) + 1.6),
                             squeeze=False)
    colors = {"candidate": "tab:green", "reference": "tab:red", "within noise": "tab:gray"}
    for ax, (metric, title) in zip(axes[0], panels):
        for y, r in enumerate(comp["rows"]):
            t = r.get(metric)
            if not t or not t["n"]:
                continue
            err = 2 * t["se"] if math.isfinite(t["se"]) else 0.0
            ax.errorbar(t["mean"], y, xerr=err, fmt="o", color=colors[t["verdict"]], capsize=3)
        ax.axvline(0.0, color="black", lw=0.8)
        ax.set_yticks(range(len(comp["rows"])), [r["name"] for r in comp["rows"]])
        ax.invert_yaxis()
        ax.set_title(title, fontsize=9)
    fig.suptitle(f"{comp['candidate']['weights']} vs {comp['reference']['weights']} "
                 "(green: candidate better, red: reference better, grey: within noise)", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def _read(path: str | Path, which: str) -> dict[str, Any]:
    try:
        return json.loads(Path(path).expanduser().read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"{which} {str(path)!r} is not a readable JSON file ({type(e).__name__}: {e}); pass the "
                         f"quality.json or transformer.json of a benchmark run") from None


def run_compare(reference: str | Path, candidate: str | Path, out: str | Path = DEFAULT_OUT, *,
                force: bool = False, command: str = "") -> dict[str, Any]:
    """Compare two saved results and write ``compare.json``, ``compare.md`` and ``compare.png``.

    Args:
        reference: path of the reference quality.json or transformer.json.
        candidate: path of the candidate result of the same benchmark.
        out: output directory (default ``benchmark-results``), created if needed.
        force: replace compare.* already in ``out`` (default False).
        command: the command line recorded in the JSON (default "").

    Returns:
        The ``compare_results`` dict, with ``"command"`` and the two paths.
    """
    ref, cand = _read(reference, "reference"), _read(candidate, "candidate")
    comp = compare_results(ref, cand)
    path = check_out_dir(out)
    check_no_overwrite(path, OUTPUT_FILES, force)
    comp = {"command": command, "reference_path": str(reference), "candidate_path": str(candidate), **comp}
    atomic_write_text(path / "compare.json", json.dumps(comp, indent=1, allow_nan=True) + "\n")
    atomic_write_text(path / "compare.md", compare_markdown(comp))
    _plot(comp, path / "compare.png")
    return comp


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the arguments of ``learned-optim benchmark compare`` to ``parser`` (read by ``run_cli``)."""
    parser.add_argument("reference", help="the reference result: a quality.json or transformer.json")
    parser.add_argument("candidate", help="the candidate result of the same benchmark and settings")
    parser.add_argument("--out", default=DEFAULT_OUT, metavar="DIR",
                        help=f"output directory (default ./{DEFAULT_OUT}); writes {', '.join(OUTPUT_FILES)}")
    parser.add_argument("--force", action="store_true", help="replace compare.json/.md/.png already in --out")


def run_cli(args: argparse.Namespace) -> int:
    """Run from the arguments of ``add_cli_arguments``. Returns 0, or 2 (message on stderr) on bad input."""
    command = shlex.join([*_PROG.split(), args.reference, args.candidate, "--out", str(args.out)]
                         + ["--force"] * args.force)
    try:
        comp = run_compare(args.reference, args.candidate, args.out, force=args.force, command=command)
    except (ValueError, TypeError) as e:
        print(f"{_PROG}: error: {e}", file=sys.stderr)
        return 2
    c = comp["counts"]["final"]
    print(f"wrote {args.out}/compare.json, compare.md, compare.png: final loss, candidate better on "
          f"{c['candidate']}, within noise on {c['within noise']}, reference better on {c['reference']}")
    return 0
