"""The speed benchmark's report: Markdown tables and a PNG figure from a speed.json dict.

``write_speed_report(res, out)`` writes ``speed.md`` and ``speed.png`` into ``out``; it reads
only the results dict, so a saved speed.json renders again without measuring
(``speed.rerender``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..common.files import atomic_write_text
from ..common.machine import machine_line
from .common import save_figure

__all__ = ["speed_markdown", "plot_speed", "write_speed_report"]


def _ms(s: float) -> str:
    return f"{s * 1e3:.3g}"


def _mib(b: float | None) -> str:
    return "n/a" if b is None else f"{b / 2**20:.3g}"


def speed_markdown(res: dict[str, Any]) -> str:
    labels = res["settings"]["configs"]
    fl = res["floor_per_param"]
    mp = res["machine_peaks"]
    cfg = res["weights"]["config"]
    lines = [f"# Speed and memory: LearnedOptimizer.step() vs torch.optim.Adam ({res['device']})", ""]
    if res["settings"]["quick"]:
        lines += ["**QUICK RUN** (short timing budget): indicative only.", ""]
    lines += [
        f"Command: `{res['command']}`  ",
        f"Machine: {machine_line(res['machine'])}  ",
        f"Date (UTC): {res['machine']['date_utc']}; wall time {res['wall_s']:.0f} s. "
        f"Weights `{res['weights']['name']}` "
        f"(H = {cfg['hidden_size']}, F = {len(cfg['features'])}). Parameters: {res['settings']['param_layout']}. "
        f"Timer: {res['settings']['timer']}; medians after {res['settings']['warmup']} warm-up steps, optimizers "
        "interleaved round-robin in one process.",
        "",
        "## Optimizer step time (ms, median)", "",
        "| params | " + " | ".join(labels.values()) + " | learned / Adam fused | learned / Adam foreach |",
        "|---|" + "---|" * (len(labels) + 2),
    ]
    for e in res["sizes"]:
        t = e["timing"]
        lines.append(f"| {e['n_params']:.3g} | " + " | ".join(_ms(t[k]["median_s"]) for k in labels)
                     + f" | {e['ratio_learned_to']['adam_fused']:.1f}x"
                     + f" | {e['ratio_learned_to']['adam_foreach']:.1f}x |")
    lines += [
        "", "## The learned step against its floor", "",
        f"Per parameter the step must do {fl['flops']} FLOPs ({fl['flops_matmul']} gate matmul, "
        f"{fl['flops_head']} head, {fl['flops_elementwise']} elementwise) and move {fl['bytes']} bytes "
        "(read+write of param, m, v, h, c; read of "
        f"grad; fp32). Measured peaks: matmul {mp['matmul_shape']} at "
        + ", ".join(f"K={k}: {v / 1e9:.1f} GFLOP/s" for k, v in mp["matmul_flops_per_s"].items())
        + f" (floor uses the best, {mp['best_matmul_flops_per_s'] / 1e9:.1f} GFLOP/s); copy bandwidth "
        f"{mp['copy_bytes_per_s'] / 1e9:.1f} GB/s (read+write, {mp['copy_buffer_bytes'] / 2**20:.0f} MiB buffer); "
        "both peaks are the fastest of their repeats. Floor = max(compute floor, bytes floor).",
        "",
        "| params | learned (ms) | compute floor (ms) | bytes floor (ms) | measured / compute floor "
        "| measured / bytes floor | measured / floor |",
        "|---|---|---|---|---|---|---|",
    ]
    for e in res["sizes"]:
        f = e["floor"]
        lines.append(f"| {e['n_params']:.3g} | {_ms(e['timing']['learned']['median_s'])} | {_ms(f['compute_s'])} | "
                     f"{_ms(f['bytes_s'])} | {f['measured_over_compute_floor']:.2f}x | "
                     f"{f['measured_over_bytes_floor']:.2f}x | "
                     f"{f['measured_over_floor']:.2f}x |")
    rss_cols = any("rss_extra_bytes" in m for e in res["sizes"] for m in e["memory"].values())
    lines += ["", "## Memory", "",
              "State bytes/param: tensors in `optimizer.state`. Peak extra: the most memory allocated beyond what "
              "existed before one steady-state `step()` ("
              + ("torch.cuda.max_memory_allocated" if res["device"] == "cuda" else
                 "torch profiler, every CPU allocation and free of the step")
              + "), in MiB and as a fraction of the optimizer's state"
              + ("; RSS: growth of the resident-set high-water mark over that step in a fresh process."
                 if rss_cols else ".")
              + " Workspace an optimizer allocates once and keeps between steps (e.g. cached chunk buffers) is"
              " not in either figure; the state column counts only `optimizer.state`.",
              ""]
    head = "| params | optimizer | state B/param | state (MiB) | peak extra (MiB) | peak extra / state |"
    if rss_cols:
        head += " RSS extra (MiB) | RSS extra / state |"
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    for e in res["sizes"]:
        for k, m in e["memory"].items():
            row = (f"| {e['n_params']:.3g} | {labels[k]} | {m['state_bytes_per_param']:.1f} | "
                   f"{_mib(m['state_bytes'])} | "
                   f"{_mib(m['peak_extra_bytes'])} | "
                   + ("n/a" if m["peak_extra_over_state"] is None else f"{100 * m['peak_extra_over_state']:.1f}%")
                   + " |")
            if rss_cols:
                r = m.get("rss_extra_over_state")
                row += f" {_mib(m.get('rss_extra_bytes'))} | " + ("n/a" if r is None else f"{100 * r:.1f}%") + " |"
            lines.append(row)
    ts = res["training_step"]
    lines += ["", f"## Whole training step: {ts['model']} ({ts['params'] / 1e6:.2f}M params)", "",
              "zero_grad + forward + backward + step: median and minimum over the repeats (ms), and the learned "
              "optimizer's median over this one's.", "",
              "| optimizer | median ms | min ms | learned / this (medians) |", "|---|---|---|---|"]
    for k, v in ts["timing"].items():
        lines.append(f"| {labels[k]} | {_ms(v['median_s'])} | {_ms(v['min_s'])} | {ts['ratio_learned_to'][k]:.2f}x |")
    # Adam (fused) and AdamW (fused) do nearly the same work, so their gap is a gauge of timing
    # noise on this machine (other processes, frequency changes).
    gaps = [abs(e["timing"]["adam_fused"]["median_s"] - e["timing"]["adamw_fused"]["median_s"])
            / e["timing"]["adam_fused"]["median_s"] for e in res["sizes"]]
    tgap = abs(ts["timing"]["adam_fused"]["median_s"] - ts["timing"]["adamw_fused"]["median_s"]) \
        / ts["timing"]["adam_fused"]["median_s"]
    lines += ["", f"Noise gauge: Adam (fused) and AdamW (fused) do nearly the same work; their medians differ by "
              f"{', '.join(f'{100 * g:.0f}%' for g in gaps)} over the step sizes above and by {100 * tgap:.0f}% on the "
              "training step. Differences of that order are not signal."]
    cp = res.get("cpu_paths")
    if cp:
        lines += ["", f"## CPU implementations of the learned step ({cp['n_params_requested']:.0e} params, "
                  f"{cp['threads']} thread(s))", "",
                  "The same step on each CPU path, each in a fresh process with the environment shown (medians; "
                  "the floor is the compute floor above). The AVX2 builds run on this CPU, so they show what the "
                  "AVX2 code costs here, not on an AVX2-only machine.", "",
                  "| path | environment | median ms | / compute floor | C loop |", "|---|---|---|---|---|"]
        for v in cp["paths"].values():
            env = " ".join(f"`{k}={x}`" for k, x in v["env"].items()) or "(default)"
            loop = ("none" if not v["c_loop_built"] or v["env"].get("LEARNED_OPTIM_C_KERNEL") == "0" else
                    "portable" if v["env"].get("LEARNED_OPTIM_C_SIMD") == "0" or not v["simd_width"] else
                    f"{v['simd_width']}-bit vectors")
            lines.append(f"| {v['label']} | {env} | {_ms(v['median_s'])} | {v['over_compute_floor']:.2f}x | {loop} |")
        for k, why in cp["skipped"].items():
            lines.append(f"| {k} | skipped: {why} | | | |")
    lines += ["", "Targets of the learned step on CPU at 1e6 and 1e7 params: measured / compute floor <= 2; "
              "peak extra / state <= 25%. Raw numbers: `speed.json`; figure: `speed.png`.", ""]
    return "\n".join(lines)


def plot_speed(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = res["settings"]["configs"]
    ns = [e["n_params"] for e in res["sizes"]]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    for k, lab in labels.items():
        a1.plot(ns, [e["timing"][k]["median_s"] * 1e3 for e in res["sizes"]], marker="o", label=lab,
                lw=2.2 if k == "learned" else 1.2)
        line, = a2.plot(ns, [e["memory"][k]["state_bytes_per_param"] for e in res["sizes"]], marker="o",
                        label=f"{lab}: state", lw=2.2 if k == "learned" else 1.2)
        a2.plot(ns, [e["memory"][k]["peak_extra_bytes"] / e["n_params"] for e in res["sizes"]], ls="--", marker="x",
                color=line.get_color(), label=f"{lab}: peak extra during step")
    a1.plot(ns, [e["floor"]["floor_s"] * 1e3 for e in res["sizes"]], "k:", label="learned floor")
    a1.set(xscale="log", yscale="log", xlabel="parameters", ylabel="step time (ms, median)",
           title=f"optimizer.step() time ({res['device']}, {res['settings']['threads']} thread(s))")
    a1.legend(fontsize=7)
    a2.set(xscale="log", xlabel="parameters", ylabel="bytes / parameter", title="optimizer memory per parameter")
    a2.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def write_speed_report(res: dict[str, Any], out: Path, figure: bool = True) -> None:
    """Write ``speed.md`` (and, with ``figure``, ``speed.png``) into the folder ``out``."""
    atomic_write_text(Path(out) / "speed.md", speed_markdown(res))
    if figure:
        plot_speed(res, Path(out) / "speed.png")
