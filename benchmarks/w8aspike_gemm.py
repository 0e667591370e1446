"""W8ASpike linear vs bf16 F.linear on the SpikingBrain-7B projection shapes, one GPU, CUDA graphs.

For each shape and M: bf16 `F.linear` (the baseline), the spike quantizer alone, and our `w8aspike_linear`
(Triton spike quantizer + int8 GEMM with the ELL overflow, bf16 out as the linear method asks), with synthetic codes
round(N(0, 49.3)) (~1% beyond ±127) and with the overflow off (codes clamped). Each timed graph holds
`calls` back-to-back linears cycling over enough weight copies that they do not stay in L2; the time is the
median over replays (CUDA events) divided by `calls`. Outputs are first checked against the naive reference
(exact group sums, fp64 combine) at M = 1 and 16.

    python benchmarks/w8aspike_gemm.py --out benchmarks/results/w8aspike_gemm

`--sweep` instead times every plan of `triton_kernels.candidate_plans` (GEMV tiles/warps/splits for M <= 16, int8
dot tiles/warps/stages/splits for any M; `--kinds` picks) in the same linear (quantizer + GEMM with that plan), on
the overflow layer, after checking each plan's output against the naive reference; it reports the best plan per
shape and M next to the default `gemm_plan` and bf16. The winners that beat the default by more than
`TUNED_MARGIN` go into `w8aspike_plans.json` in --out (merged with one already there), a table for
`vllm_neuronchip/ops/w8aspike/tuned_plans.py`: NEURONCHIP_W8ASPIKE_PLANS=that file makes the plugin use it, and
its entry copied into `tuned_plans.json` makes it the default for this GPU model:

    python benchmarks/w8aspike_gemm.py --sweep --m 1 16 64 256 --out benchmarks/results/w8aspike_sweep
"""

import argparse
import dataclasses
import json
import math
import statistics
import sys
import time
from functools import partial
from pathlib import Path

SHAPES = {  # name: (N, K), per rank at TP=1
    "qkv_proj": (4608, 3584),
    "o_proj": (3584, 3584),
    "gk_proj": (512, 3584),
    "gate_up_proj": (37888, 3584),
    "down_proj": (3584, 18944),
}
M_VALUES = (1, 8, 16, 256, 4096)
K_SPIKE = 3.0
DEVICE = "cuda"
COPY_BYTES = 256 << 20  # weight bytes cycled through per graph: well past the 50 MB L2 of an H100
TUNED_MARGIN = 0.03  # a swept plan enters the tuned table only if at least 3% faster than the default


def synthetic_layer(N, K, device, seed):
    import torch

    from vllm_neuronchip.quantization.w8aspike import synthetic_codes

    exact, scales = synthetic_codes((N, K), f"bench.{N}x{K}.{seed}", device)
    bias = torch.randn(N, device=device, generator=torch.Generator(device).manual_seed(seed)) if N == 512 else None
    return exact, scales, bias  # bias only on gk_proj, as in the 7B


def timed(fn, calls, replays):
    """Median seconds per call of `fn(i)` for i in range(calls), captured in one CUDA graph."""
    import torch

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for i in range(calls):  # warm up: compile Triton kernels, settle allocations
            fn(i)
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(calls):
            fn(i)
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3 / calls)
    del graph
    return statistics.median(times)


def bf16_linear(x, weights, bias, i):
    import torch.nn.functional as F

    return F.linear(x, weights[i % len(weights)], bias)


def our_linear(x, weights, scales, bias, i):
    """As W8ASpikeLinearMethod.apply on the integer path: spike-quantize, GEMM, back to x's dtype."""
    from vllm_neuronchip.ops.w8aspike import w8aspike_linear

    return w8aspike_linear(x, K_SPIKE, weights[i % len(weights)], scales[i % len(scales)], bias, out_dtype=x.dtype)[0]


def plan_linear(x, weights, scales, bias, plan, i):
    """`our_linear` with the GEMM's plan forced (the sweep)."""
    from vllm_neuronchip.ops.w8aspike import triton_kernels

    s, vth = triton_kernels.spike_quantize(x, K_SPIKE)
    return triton_kernels.w8aspike_matmul(s, vth, weights[i % len(weights)], scales[i % len(scales)], bias, plan=plan,
                                          out_dtype=x.dtype)


def quantize_only(x, i):
    """The spike quantizer alone (what every W8ASpike linear launches before its GEMM)."""
    from vllm_neuronchip.ops.w8aspike import triton_kernels

    return triton_kernels.spike_quantize(x, K_SPIKE)


def naive_reference(s, vth, weight, scales, bias):
    """Exact group sums as fp64 integers (einsum on the GPU), fp64 combine: the naive GEMM's output."""
    import torch

    from vllm_neuronchip.ops.w8aspike import naive

    M, K = s.shape
    N, G = weight.codes.shape[0], K // 128
    exact = weight.exact().double().view(N, G, 128)
    acc = torch.einsum("mgk,ngk->mng", s.double().view(M, G, 128), exact)
    return naive.combine_group_sums(acc, vth, scales, bias)


def sweep(args, device):
    """Time every candidate plan per shape and M; returns result rows."""
    import torch

    from vllm_neuronchip.ops.w8aspike import triton_kernels
    from vllm_neuronchip.quantization.weight_codes import WeightCodes

    sm_count = triton_kernels._sm_count(device)
    rows = []
    for name in args.shapes:
        N, K = SHAPES[name]
        exact, scales, bias = synthetic_layer(N, K, device, seed=0)
        weight = WeightCodes.from_exact(exact)
        w_bf16 = bf16_weight(exact, scales)
        bias_bf16 = bias.bfloat16() if bias is not None else None
        del exact
        W = weight.ell_cols.shape[1]
        copies = copy_count(w_bf16)
        w_copies, s_copies, b_copies = (copies_of(v, copies) for v in (weight, scales, w_bf16))
        for M in args.m:
            calls = args.sweep_calls if M <= 256 else 2
            replays = args.sweep_replays if M <= 256 else 5
            x = torch.randn(M, K, device=device, generator=torch.Generator(device).manual_seed(M)).bfloat16()
            s, vth = triton_kernels.spike_quantize(x, K_SPIKE)
            y_ref = naive_reference(s, vth, weight, scales, bias)
            bf16_s = timed(partial(bf16_linear, x, b_copies, bias_bf16), calls, replays)
            default = triton_kernels.gemm_plan(M, N, K // 128, W, sm_count)
            plans = triton_kernels.candidate_plans(M, N, K // 128, W, sm_count, args.kinds)[: args.max_plans]
            timings = []
            for plan in plans:
                began = time.perf_counter()
                try:
                    check_close(triton_kernels.w8aspike_matmul(s, vth, weight, scales, bias, plan=plan), y_ref,
                                f"{name} M={M}")
                    seconds = timed(partial(plan_linear, x, w_copies, s_copies, bias, plan), calls, replays)
                except Exception as e:  # noqa: BLE001 -- a plan that fails to compile (shared memory) or is wrong: recorded, the sweep goes on
                    print(f"  {name} M={M} {plan}: FAILED {type(e).__name__}: {str(e)[:200]}", flush=True)
                    timings.append({"plan": dataclasses.asdict(plan), "error": f"{type(e).__name__}: {e}"[:500]})
                    continue
                timings.append({"plan": dataclasses.asdict(plan), "s": seconds, "programs": plan.programs(M, N),
                                "wall_s": time.perf_counter() - began})
                if args.verbose:
                    print(f"  {name} M={M} {seconds * 1e6:8.1f} us  {plan}", flush=True)
            ok = [t for t in timings if "s" in t]
            best = min(ok, key=lambda t: t["s"]) if ok else None
            default_s = next((t["s"] for t in ok if t["plan"] == dataclasses.asdict(default)), None)
            tuned = bool(best and default_s and best["s"] < (1 - TUNED_MARGIN) * default_s)
            rows.append({"shape": name, "M": M, "N": N, "K": K, "ell_width": W, "bf16_s": bf16_s,
                         "default_plan": dataclasses.asdict(default), "default_s": default_s, "best": best,
                         "tuned": tuned, "plans": timings})
            if best:
                print(f"{name:13s} M={M:5d}  bf16 {bf16_s * 1e6:8.1f} us  default "
                      f"{(default_s or math.nan) * 1e6:8.1f} us  best {best['s'] * 1e6:8.1f} us "
                      f"(x{bf16_s / best['s']:.2f} vs bf16) {best['plan']}", flush=True)
        del w_copies, s_copies, b_copies, weight, w_bf16
        torch.cuda.empty_cache()
    return rows


def write_tuned_table(rows, path: Path, device) -> dict:
    """Merge the sweep's tuned winners (rows with "tuned") into the table at `path` under this GPU's name."""
    import torch
    import triton

    from vllm_neuronchip.ops import gpu_tables
    from vllm_neuronchip.ops.w8aspike.tuned_plans import PLAN_SETTINGS

    table = json.loads(path.read_text()) if path.exists() else {}
    entry = table.setdefault(torch.cuda.get_device_name(device), {"plans": {}})
    entry.update(arch=gpu_tables.device_arch(device), triton=triton.__version__,
                 measured_by="benchmarks/w8aspike_gemm.py --sweep (quantizer + GEMM, CUDA graphs)")
    for row in rows:
        if row["tuned"]:
            plan = row["best"]["plan"]
            entry["plans"].setdefault(f"{row['N']}x{row['K']}", {})[str(row["M"])] = {
                k: plan[k] for k in PLAN_SETTINGS}
    path.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    return table


def compare(args, device):
    """Per shape and M: bf16 against ours with and without the overflow, the default plans; result rows."""
    import torch

    from vllm_neuronchip.ops.w8aspike import triton_kernels
    from vllm_neuronchip.quantization.weight_codes import WeightCodes

    rows = []
    for name in args.shapes:
        N, K = SHAPES[name]
        exact, scales, bias = synthetic_layer(N, K, device, seed=0)
        layers = {"overflow": WeightCodes.from_exact(exact), "no_overflow": WeightCodes.from_exact(exact.clamp(-127, 127))}
        w_bf16 = bf16_weight(exact, scales)
        bias_bf16 = bias.bfloat16() if bias is not None else None
        del exact
        full = layers["overflow"]
        overflow_fraction = (full.ell_residual != 0).sum().item() / full.codes.numel()
        for M in (1, 16, 64):  # correctness first (GEMV and dot paths), fail loudly
            x = torch.randn(M, K, device=device).bfloat16()
            for weight in layers.values():
                check_against_naive(x, weight, scales, bias)
        bytes_bf16 = w_bf16.nbytes
        copies = copy_count(w_bf16)
        w_copies, s_copies = copies_of(w_bf16, copies), copies_of(scales, copies)
        layers = {label: copies_of(weight, copies) for label, weight in layers.items()}
        for M in args.m:
            calls = 40 if M <= 256 else 2
            replays = args.replays if M <= 256 else 10
            x = torch.randn(M, K, device=device, generator=torch.Generator(device).manual_seed(M)).bfloat16()
            row = {"shape": name, "M": M, "N": N, "K": K, "copies": copies, "calls_per_graph": calls,
                   "replays": replays, "overflow_fraction": overflow_fraction, "ell_width": full.ell_cols.shape[1]}
            row["bf16_s"] = timed(partial(bf16_linear, x, w_copies, bias_bf16), calls, replays)
            row["quantize_s"] = timed(partial(quantize_only, x), calls, replays)
            row["bf16_weight_GBps"] = bytes_bf16 / row["bf16_s"] / 1e9
            for label, weights in layers.items():
                w0 = weights[0]
                ours_bytes = w0.codes.nbytes + w0.ell_cols.nbytes + w0.ell_residual.nbytes + scales.nbytes
                row[f"{label}_s"] = timed(partial(our_linear, x, weights, s_copies, bias), calls, replays)
                row[f"{label}_weight_bytes"] = ours_bytes
                row[f"{label}_weight_GBps"] = ours_bytes / row[f"{label}_s"] / 1e9
                row[f"{label}_speedup_vs_bf16"] = row["bf16_s"] / row[f"{label}_s"]
            plan = triton_kernels.device_plan(M, N, K // 128, full.ell_cols.shape[1], device)
            row["plan"] = dataclasses.asdict(plan)
            rows.append(row)
            print(f"{name:13s} M={M:5d}  bf16 {row['bf16_s'] * 1e6:9.1f} us  ours {row['overflow_s'] * 1e6:9.1f} us "
                  f"(x{row['overflow_speedup_vs_bf16']:.2f}, {row['overflow_weight_GBps']:6.0f} GB/s)  "
                  f"no overflow {row['no_overflow_s'] * 1e6:9.1f} us (x{row['no_overflow_speedup_vs_bf16']:.2f})  "
                  f"{plan.kind} S={plan.splits}  quantizer {row['quantize_s'] * 1e6:.1f} us", flush=True)
        del w_bf16, w_copies, layers, s_copies, full, weight, w0, weights
        torch.cuda.empty_cache()
    return rows


def check_against_naive(x, weight, scales, bias):
    """Our linear (spike counts and output) against round(x / vth) and the naive exact group sums."""
    import torch

    from vllm_neuronchip.ops.w8aspike import triton_kernels, w8aspike_linear

    y, s = w8aspike_linear(x, K_SPIKE, weight, scales, bias)
    s_ref, vth = triton_kernels.spike_quantize(x, K_SPIKE)
    if not torch.equal(s, s_ref) or not torch.equal(s, torch.round(x.float() / vth).to(torch.int32)):
        raise AssertionError("spike counts differ from round(x / vth)")
    y_ref = naive_reference(s, vth, weight, scales, bias)  # exact integers in fp64
    return check_close(y, y_ref, f"w8aspike GEMM {tuple(s.shape)} x {tuple(weight.codes.shape)}")


def bf16_weight(exact, scales):
    """The dequantized weight the bf16 baseline multiplies: codes · σ per 128-group."""
    N, K = exact.shape
    return (exact.view(N, K // 128, 128) * scales[..., None]).view(N, K).bfloat16()


def copy_count(w_bf16) -> int:
    """Weight copies a timed graph cycles through, so that the int8 codes alone exceed `COPY_BYTES`."""
    return max(1, min(40, math.ceil(COPY_BYTES / (w_bf16.nbytes / 2))))


def copies_of(value, copies: int) -> list:
    """`value` (a tensor or WeightCodes) and copies - 1 clones of it."""
    import torch

    from vllm_neuronchip.quantization.weight_codes import WeightCodes

    def clone(v):
        return v.apply(torch.clone) if isinstance(v, WeightCodes) else v.clone()

    return [value] + [clone(value) for _ in range(copies - 1)]


def check_close(y, y_ref, what: str) -> float:
    """Raise unless y is within 1e-5 of the largest |y_ref| (fp32 rounding of the combine); the relative error."""
    error = (y - y_ref).abs().max().item()
    tolerance = 1e-5 * y_ref.abs().max().item()
    if not error <= tolerance:
        raise AssertionError(f"{what}: max error {error:.3g} > {tolerance:.3g} against the naive reference")
    return error / max(y_ref.abs().max().item(), 1e-30)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="directory for w8aspike_gemm.json")
    parser.add_argument("--m", type=int, nargs="+", default=list(M_VALUES), help="rows (tokens) per GEMM")
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--replays", type=int, default=50, help="graph replays per timing (M <= 256)")
    parser.add_argument("--sweep", action="store_true", help="time every candidate GEMM plan instead")
    parser.add_argument("--max-plans", type=int, default=None, help="sweep: first N candidates only (default first)")
    parser.add_argument("--kinds", nargs="+", default=["gemv", "dot"], choices=["gemv", "dot", "dense"],
                        help="sweep: GEMM paths whose plans are timed (the default plan always is)")
    parser.add_argument("--sweep-calls", type=int, default=20, help="sweep: linears per graph (M <= 256)")
    parser.add_argument("--sweep-replays", type=int, default=20, help="sweep: graph replays per timing (M <= 256)")
    parser.add_argument("--verbose", action="store_true", help="sweep: print every plan's time")
    args = parser.parse_args()

    import torch
    import triton

    from vllm_neuronchip.ops.w8aspike import triton_kernels

    if not torch.cuda.is_available():
        sys.exit("w8aspike_gemm needs a CUDA GPU")
    device = torch.device(DEVICE)
    began = time.perf_counter()
    results = sweep(args, device) if args.sweep else compare(args, device)
    report = {
        "device": torch.cuda.get_device_name(device),
        "sm_count": triton_kernels._sm_count(device),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "seconds": time.perf_counter() - began,
        "k": K_SPIKE,
        "x": "N(0, 1) bf16",
        "timing": "CUDA graph of calls_per_graph linears over distinct weight copies, median of replays / calls",
        "mode": "sweep" if args.sweep else "compare",
        "results": results,
    }
    print(f"done in {report['seconds']:.0f} s")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        name = "w8aspike_sweep.json" if args.sweep else "w8aspike_gemm.json"
        (args.out / name).write_text(json.dumps(report, indent=1) + "\n")
        print(f"wrote {args.out / name}")
        if args.sweep:
            write_tuned_table(results, args.out / "w8aspike_plans.json", device)
            print(f"wrote {args.out / 'w8aspike_plans.json'}: {sum(r['tuned'] for r in results)} tuned plans")


if __name__ == "__main__":
    main()
