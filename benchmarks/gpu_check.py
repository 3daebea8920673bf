"""GPU check: parity of every path on CUDA against the reference, then speed.

    python benchmarks/gpu_check.py                # parity + speed at 1e6, 1e7, 1e8 + training step
    python benchmarks/gpu_check.py --int64        # also a > 2^31-element tensor (~70 GB of memory)
    python benchmarks/gpu_check.py --sizes 1e6 --no-train --json /tmp/gpu_check.json

Prints one table: each row is a check (PASS/FAIL with its worst error) or a timing; ``--json``
also writes the rows and the machine to a file, rewritten after every row, so a run stopped early
keeps what it measured. Parity covers three rules with random heads: a format-version-1 rule, the
shipped default's config (format version 2: sign equivariance and its per-tensor context) and a
version-2 rule with every context input. The timings use the shipped default's weights, CUDA
events and medians over --reps steps (``learned_optim.benchmarking.measure``). The bytes floor is
the bytes the update must read and write per coordinate (the speed benchmark's ``step_floor``:
p, g, m, v, h, c in; p, m, v, h, c out) over the copy bandwidth measured here with a 1 GiB
device-to-device copy. The target: the learned step at 1e8 parameters within 1.5x that floor.

Without CUDA it says so and exits 0 after a CPU smoke run of the eager path (the parity tests for
CPU live in tests/test_fastpath.py and tests/test_kernels.py).
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

try:
    import learned_optim  # noqa: F401
except ImportError:  # a checkout that is not pip-installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from learned_optim import LearnedOptimizer, kernels  # noqa: E402
from learned_optim.benchmarking.measure import copy_bandwidth, median_time  # noqa: E402
from learned_optim.benchmarking.speed import step_floor  # noqa: E402
from learned_optim.common.files import write_json  # noqa: E402
from learned_optim.common.machine import machine_info, machine_line  # noqa: E402
from learned_optim.hub import DEFAULT_WEIGHTS, from_pretrained  # noqa: E402
from learned_optim.network import CONTEXT_FEATURES, CoordinatewiseLSTM, LSTMOptimizerConfig  # noqa: E402
from learned_optim.update import learned_update  # noqa: E402

ROWS: list[tuple[str, str, str]] = []
# Where row() rewrites the JSON report (main sets it from --json), and what the report holds besides the rows.
REPORT: dict = {"path": None, "head": {}}
# Sizes a dry run on CPU makes small: the parity shapes, the block sweep's parameter count and the
# training step's transformer (layers, width, batch, sequence length).
PARITY_SHAPES = [(), (1,), (7,), (3, 5, 2, 2), (64, 3, 3, 3), (1025,), (333, 517), (4097,)]
SWEEP_N = 10**8
TRAIN_SHAPE = (12, 768, 8, 512)


def row(check: str, result: str, detail: str = "") -> None:
    ROWS.append((check, result, detail))
    print(f"  {check:58s} {result:>10s}  {detail}", flush=True)
    if REPORT["path"]:
        write_json(REPORT["path"], {**REPORT["head"], "rows": [{"check": c, "result": r, "detail": d}
                                                                  for c, r, d in ROWS]})


def random_net(seed: int, config: LSTMOptimizerConfig | None = None) -> CoordinatewiseLSTM:
    gen = torch.Generator().manual_seed(seed)
    net = CoordinatewiseLSTM(config, seed=seed)
    with torch.no_grad():
        net.head_weight.copy_(torch.randn(net.head_weight.shape, generator=gen) * 0.5)
        net.head_bias.copy_(torch.randn(net.head_bias.shape, generator=gen) * 0.3)
    return net


def make_state(shapes, device, dtype, state_dtype, gen, noncontig=False):
    hs = 4
    sdt = state_dtype or (torch.float64 if dtype == torch.float64 else torch.float32)
    mdt = torch.float64 if dtype == torch.float64 else torch.float32

    def rnd(shape, dt, scale=1.0, positive=False):
        t = torch.randn(shape, generator=gen, dtype=torch.float64)
        if noncontig and len(shape) >= 2:
            t = t.transpose(-1, -2).contiguous().transpose(-1, -2)  # same values, transposed strides
        if positive:
            t = t.abs() + 0.01
        return (t * scale).to(device=device, dtype=dt)

    return [dict(p=rnd(s, dtype), m=rnd(s, mdt, 0.1), v=rnd(s, mdt, 0.1, True), h=rnd((hs, *s), sdt, 0.3),
                 c=rnd((hs, *s), sdt), step=torch.tensor(float(i % 7))) for i, s in enumerate(shapes)]


def apply(case, grads_seq, net, impl, **kw):
    case = copy.deepcopy(case)
    for grads in grads_seq:
        learned_update([e["p"] for e in case], grads, [e["m"] for e in case], [e["v"] for e in case],
                       [e["h"] for e in case], [e["c"] for e in case], [e["step"] for e in case],
                       weights=net, config=net.config, impl=impl, **kw)
    return case


def worst_rel(got, want) -> float:
    """max |got - want| / (1 + |want|) over every value: relative for large values, absolute for
    small ones (LSTM state near 0 would make a pure relative error meaningless)."""
    worst = 0.0
    for a, b in zip(got, want):
        for k in ("p", "m", "v", "h", "c"):
            x, y = a[k].double(), b[k].double()
            worst = max(worst, float(((x - y).abs() / (y.abs() + 1)).max()) if x.numel() else 0.0)
    return worst


def rules() -> list[tuple[str, CoordinatewiseLSTM]]:
    """The rules parity runs: version 1, the shipped default's config, every version-2 input (and
    the cautious mask with its per-tensor rescale)."""
    default = from_pretrained(DEFAULT_WEIGHTS).config
    every = LSTMOptimizerConfig(sign_equivariant=True, context_features=CONTEXT_FEATURES, cautious_scale=1.5,
                                cautious_rescale=True)
    return [("v1", random_net(0)), ("default-config", random_net(7, default)), ("v2-every-input", random_net(8, every))]


def parity(device) -> None:
    for name, net in rules():
        parity_one(device, name, net.to(device))


def parity_one(device, rule_name: str, net: CoordinatewiseLSTM) -> None:
    shapes = PARITY_SHAPES
    # "fused" is the Triton kernel on CUDA; "eager" the torch chunk loop
    paths = ["eager"] + (["fused"] if kernels.triton_available(device) else [])
    if "fused" not in paths:
        row("triton kernel available", "FAIL", "triton not importable: pip install triton")
    # (param dtype, state dtype, allowed relative error): fp64 is exact maths; fp32 rounding;
    # low-precision values a few ulps (eps = 2^-7 for bf16, 2^-10 for fp16) after 3 steps
    for dtype, sdt, tol in [(torch.float64, None, 1e-10), (torch.float32, None, 1e-5),
                            (torch.bfloat16, None, 4 * 2**-7), (torch.float16, None, 4 * 2**-10),
                            (torch.float32, torch.bfloat16, 4 * 2**-7)]:
        gen = torch.Generator().manual_seed(1)
        for noncontig in (False, True):
            case = make_state(shapes, device, dtype, sdt, gen, noncontig)
            steps = 3 if dtype != torch.float64 else 55
            grads_seq = [[torch.randn(e["p"].shape, generator=gen, dtype=torch.float64).to(device, dtype)
                          for e in case] for _ in range(steps)]
            kw = dict(lr=1e-2, weight_decay=0.1, maximize=noncontig)
            want = apply(case, grads_seq, net, "reference", **kw)
            for impl in paths:
                err = worst_rel(apply(case, grads_seq, net, impl, **kw), want)
                name = f"parity {rule_name} {impl} {str(dtype)[6:]} state={str(sdt)[6:] if sdt else 'default'}" \
                       f"{' noncontig' if noncontig else ''} {steps} steps"
                row(name, "PASS" if err <= tol else "FAIL", f"max err/(1+|ref|) {err:.2e} (tol {tol:.0e})")


def int64_check(device) -> None:
    """One fp32 tensor of 2^31 + 4099 elements, bf16 LSTM state (~70 GB): the kernel's last
    coordinates against the reference rule applied to the same slice."""
    n = 2**31 + 4099
    net = random_net(2).to(device)
    gen = torch.Generator(device=device).manual_seed(3)
    p = torch.randn(n, device=device, generator=gen)
    g = torch.randn(n, device=device, generator=gen)
    m, v = torch.zeros(n, device=device), torch.zeros(n, device=device)
    h = torch.zeros(4, n, device=device, dtype=torch.bfloat16)
    c = torch.zeros(4, n, device=device, dtype=torch.bfloat16)
    tail = slice(n - 5000, n)
    ref = [t[..., tail].clone() for t in (p, g, m, v, h, c)]
    step, step_ref = torch.tensor(0.0), torch.tensor(0.0)
    learned_update([p], [g], [m], [v], [h], [c], [step], weights=net, config=net.config, lr=1e-2,
                   weight_decay=0.0, maximize=False, impl="fused")
    learned_update([ref[0]], [ref[1]], [ref[2]], [ref[3]], [ref[4]], [ref[5]], [step_ref], weights=net,
                   config=net.config, lr=1e-2, weight_decay=0.0, maximize=False, impl="reference")
    err = float((p[tail] - ref[0]).abs().max())
    row("int64 indexing: tensor of 2^31+4099 elements", "PASS" if err < 1e-5 else "FAIL", f"max abs err {err:.1e}")


def cuda_ms(fn, reps: int) -> float:
    """Median milliseconds of ``fn`` over ``reps`` calls after 3 warm-up calls (CUDA events).
    Each call starts on an idle GPU, so this is the host's time up to the call's last launch plus
    the device's time after it: a step's latency, not its cost inside a training loop."""
    return median_time(fn, "cuda", reps, warmup=3) * 1e3


def steady_ms(fn, reps: int) -> float:
    """Wall milliseconds per call over ``reps`` back-to-back calls after one warm-up call,
    synchronised only at both ends: the host's work of one call overlaps the device's work of
    the previous one, as in a training loop, so this is max(host time, device time) per call."""
    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / reps * 1e3


def layout(n: int) -> list[tuple[int, ...]]:
    """The timed model's tensors for ``n`` parameters: one of half of them, the rest in
    2^20-element tensors (~50 at 1e8, as many as a mid-sized model has), and two tiny ones."""
    rest = n - n // 2
    shapes = [(n // 2,)] + [(1 << 20,)] * (rest >> 20) + [(rest % (1 << 20),), (7,), (3, 3)]
    return [s for s in shapes if s[0] > 0]


def speed(device, sizes, reps, tensors: int = 0) -> None:
    net = from_pretrained(DEFAULT_WEIGHTS)
    bw = copy_bandwidth(device, 2**30, reps)  # 1 GiB: far beyond L2
    row("copy bandwidth (read+write)", f"{bw / 1e9:.0f} GB/s", "1 GiB device-to-device copy_, fastest of --reps")
    for n_f in sizes:
        time_model(device, net, layout(int(n_f)), f"{n_f:.0e} params", reps, bw, ("fused", "foreach"))
    if tensors:  # the host's share per tensor: the smallest size cut into equal tensors
        n = int(min(sizes))
        time_model(device, net, [(n // tensors,)] * tensors, f"{n:.0e} params in {tensors} tensors", reps, bw,
                   ("fused",))


def time_model(device, net, shapes, tag: str, reps: int, bw: float, adamw_kinds) -> None:
    """Rows: AdamW (each of ``adamw_kinds``) and the learned step (fused and eager; eager only
    without Triton) on random parameters of ``shapes``, named by ``tag``."""
    bytes_per = step_floor(net.config)["bytes"]  # fp32: p g m v h c in, p m v h c out
    params = [torch.randn(s, device=device) for s in shapes]
    grads = [torch.randn_like(p) for p in params]
    total = sum(p.numel() for p in params)
    for kind in adamw_kinds:
        ps = [p.clone().requires_grad_() for p in params]
        for p, g in zip(ps, grads):
            p.grad = g
        opt = torch.optim.AdamW(ps, **{kind: True})
        ms = cuda_ms(opt.step, reps)
        row(f"AdamW {kind} step, {tag}", f"{ms:.3f} ms", f"back-to-back {steady_ms(opt.step, reps):.3f} ms")
        del opt, ps
    for impl in ["fused", "eager"] if kernels.triton_available(device) else ["eager"]:
        ps = [p.clone().requires_grad_() for p in params]
        for p, g in zip(ps, grads):
            p.grad = g
        opt = LearnedOptimizer(ps, weights=net, impl=impl)
        opt.step()
        torch.cuda.synchronize()
        if impl == "fused":
            # any host-device synchronisation inside step() raises in "error" mode: the whole
            # optimizer step, the device-side non-finite check included
            torch.cuda.set_sync_debug_mode("error")
            try:
                opt.step()
                row(f"no host sync in LearnedOptimizer.step() (fused), {tag.replace(' params', '')}", "PASS")
            except RuntimeError as e:
                row(f"no host sync in LearnedOptimizer.step() (fused), {tag.replace(' params', '')}", "FAIL",
                    str(e)[:60])
            finally:
                torch.cuda.set_sync_debug_mode("default")
        # the eager loop takes seconds per step at 1e8 on a GPU: a few calls say enough
        r = reps if impl == "fused" else min(reps, 3)
        ms, steady = cuda_ms(opt.step, r), steady_ms(opt.step, r)
        floor = total * bytes_per / bw * 1e3
        row(f"learned {impl} step, {tag}", f"{ms:.3f} ms",
            f"back-to-back {steady:.3f} ms = {steady / floor:.2f}x bytes floor ({floor:.3f} ms)")
        del opt, ps


def block_sweep(device, reps) -> None:
    """Step time of the Triton kernel at 1e8 parameters for (BLOCK, num_warps) settings around
    the table in learned_optim/kernels/_triton_update.py (LAUNCH, chosen from the registers per
    thread measured without a GPU: benchmarks/results/triton_compile.md), per dtype pair."""
    for p_dtype, s_dtype in [(torch.float32, torch.float32), (torch.bfloat16, torch.float32),
                             (torch.float32, torch.bfloat16), (torch.float16, torch.float32),
                             (torch.float64, torch.float64)]:
        _sweep_one(device, reps, p_dtype, s_dtype)


def launch_times(device, reps, p_dtype, s_dtype, launches, passes: int = 1) -> dict[tuple[int, int], list[float]]:
    """Milliseconds per call (CUDA events) of the Triton update of SWEEP_N parameters of ``p_dtype``
    (two tensors) with LSTM state of ``s_dtype``, the shipped default's weights, at each (BLOCK,
    num_warps) of ``launches``; every later pass runs them in the reverse order of the one before,
    so that drift shows as a difference between passes."""
    from learned_optim.kernels import _triton_update as kt

    net = from_pretrained(DEFAULT_WEIGHTS).to(device)
    n = SWEEP_N
    ps = [torch.randn(n // 2, device=device).to(p_dtype), torch.randn(n - n // 2, device=device).to(p_dtype)]
    gs = [torch.randn_like(p) for p in ps]
    mdt = torch.float64 if p_dtype == torch.float64 else torch.float32  # the moments in the compute dtype
    state = [[torch.zeros_like(p, dtype=mdt) for p in ps] for _ in range(2)]
    hc = [[torch.zeros(4, p.numel(), device=device, dtype=s_dtype) for p in ps] for _ in range(2)]
    steps = [torch.tensor(0.0) for _ in ps]

    def step():
        learned_update(ps, gs, state[0], state[1], hc[0], hc[1], steps, weights=net, config=net.config, lr=1e-3,
                       weight_decay=0.0, maximize=False, impl="fused")

    found: dict[tuple[int, int], list[float]] = {}
    order = list(launches)
    try:
        for _ in range(passes):
            for launch in order:
                kt.LAUNCH_OVERRIDE = launch
                found.setdefault(launch, []).append(cuda_ms(step, reps))
            order = order[::-1]
    finally:
        kt.LAUNCH_OVERRIDE = None
    return found


def _sweep_one(device, reps, p_dtype, s_dtype) -> None:
    from learned_optim.kernels import _triton_update as kt

    default = kt.launch_config(p_dtype, s_dtype)
    launches = [(128, 4), (256, 4), (256, 8), (512, 4), (512, 8), (1024, 8)]
    for (block, warps), (ms,) in launch_times(device, reps, p_dtype, s_dtype, launches).items():
        row(f"fused {str(p_dtype)[6:]}/{str(s_dtype)[6:]} BLOCK={block} num_warps={warps}, {SWEEP_N:.0e}",
            f"{ms:.3f} ms", "(default)" if (block, warps) == default else "")


def eager_chunks(device, reps) -> None:
    """The eager loop's step at SWEEP_N parameters (gpu_check's layout) by chunk_size: on a GPU
    each chunk costs ~30 launches, so the CPU-sized default chunk is far too small there."""
    n = SWEEP_N
    params = [torch.randn(s, device=device).requires_grad_() for s in layout(n)]
    for p in params:
        p.grad = torch.randn_like(p)
    for chunk in (2**13, 2**16, 2**18, 2**20, 2**22):
        opt = LearnedOptimizer(params, impl="eager", chunk_size=chunk)
        opt.step()
        row(f"learned eager step, chunk_size 2^{chunk.bit_length() - 1}, {n:.0e} params",
            f"{steady_ms(opt.step, min(reps, 3)):.3f} ms", "back-to-back")
        del opt
        torch.cuda.empty_cache()


def _lists(opt):
    ps = [p for g in opt.param_groups for p in g["params"]]
    st = [opt.state[p] for p in ps]
    return (ps, [p.grad for p in ps], [s["exp_avg"] for s in st], [s["exp_avg_sq"] for s in st],
            [s["lstm_h"] for s in st], [s["lstm_c"] for s in st], [s["step"] for s in st])


def train_step(device, reps) -> None:
    """Whole training step (forward, backward, step) of a GPT-2-small-sized transformer encoder
    (12 layers, d=768, ~85M parameters; batch 8 x 512 tokens, bf16 autocast)."""
    torch.manual_seed(0)
    layers, d, batch, seq = TRAIN_SHAPE
    layer = torch.nn.TransformerEncoderLayer(d, 12, 4 * d, batch_first=True, norm_first=True)
    base = torch.nn.TransformerEncoder(layer, layers, enable_nested_tensor=False).to(device)
    x = torch.randn(batch, seq, d, device=device)
    results = {}
    for name in ("AdamW fused", "learned fused"):
        model = copy.deepcopy(base)
        opt = (torch.optim.AdamW(model.parameters(), fused=True) if name.startswith("AdamW")
               else LearnedOptimizer(model.parameters(), impl="fused"))

        def step():
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.bfloat16):
                loss = model(x).float().square().mean()
            loss.backward()
            opt.step()

        results[name] = cuda_ms(step, reps)
        row(f"training step, {name} (~85M params)", f"{results[name]:.2f} ms")
    over = results["learned fused"] / results["AdamW fused"] - 1
    row("training-step overhead of the learned optimizer vs AdamW fused", f"{100 * over:+.1f}%")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", type=float, default=[1e6, 1e7, 1e8])
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--int64", action="store_true", help="also check a > 2^31-element tensor (~70 GB)")
    ap.add_argument("--no-train", action="store_true", help="skip the whole-training-step comparison")
    ap.add_argument("--no-parity", action="store_true", help="skip the parity checks (timings only)")
    ap.add_argument("--tensors", type=int, default=0, metavar="N",
                    help="also time the smallest size cut into N equal tensors (the host's share per tensor)")
    ap.add_argument("--no-sweep", action="store_true", help="skip the Triton kernel's (BLOCK, num_warps) sweep")
    ap.add_argument("--eager-chunks", action="store_true",
                    help="also time the eager loop at 1e8 parameters by chunk_size")
    ap.add_argument("--json", default=None, metavar="PATH", help="also write the rows and the machine to this file")
    args = ap.parse_args()

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; nothing GPU-side was checked.")
        net = random_net(0)
        case = make_state([(3, 4), (5,)], torch.device("cpu"), torch.float64, None, torch.Generator().manual_seed(0))
        grads = [[torch.randn(e["p"].shape, dtype=torch.float64) for e in case]]
        err = worst_rel(apply(case, grads, net, "eager", lr=1e-2, weight_decay=0.0, maximize=False),
                        apply(case, grads, net, "reference", lr=1e-2, weight_decay=0.0, maximize=False))
        print(f"CPU smoke: eager path vs reference, max err/(1+|ref|) {err:.1e}")
        return 0 if err < 1e-10 else 1

    device = torch.device("cuda")
    machine = machine_info(torch.get_num_threads())
    if args.json:
        REPORT["path"] = args.json
        command = "python benchmarks/gpu_check.py " + " ".join(sys.argv[1:])
        REPORT["head"] = {"benchmark": "gpu_check", "command": command, "machine": machine,
                          "weights_timed": DEFAULT_WEIGHTS, "complete": False}
    print(f"gpu_check on {machine_line(machine)}; triton available: {kernels.triton_available(device)}")
    print(f"  {'check':58s} {'result':>10s}  detail")
    if not args.no_parity:
        parity(device)
    if args.int64:
        int64_check(device)
    speed(device, args.sizes, args.reps, args.tensors)
    if kernels.triton_available(device) and not args.no_sweep:
        block_sweep(device, args.reps)
    if args.eager_chunks:
        eager_chunks(device, args.reps)
    if not args.no_train:
        train_step(device, args.reps)
    failed = [r for r in ROWS if r[1] == "FAIL"]
    print(f"{len(ROWS)} rows, {len(failed)} FAIL")
    if args.json:
        REPORT["head"]["complete"] = True
        write_json(args.json, {**REPORT["head"], "rows": [{"check": c, "result": r, "detail": d} for c, r, d in ROWS]})
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
