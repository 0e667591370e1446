"""CPU prefill time of one GLA layer (SpikingBrain-7B shapes), chunked torch backend vs the naive recurrence.
Writes benchmarks/results/gla_cpu_prefill.{json,png}; both backends are timed for real at every length."""

import argparse
import datetime
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from serving import cpu_model  # the device name the serving benchmarks record
from vllm_neuronchip.ops import gla
from vllm_neuronchip.ops.gla import chunk

H, HKV, K, V = 28, 4, 128, 128  # one GLA layer of SpikingBrain-7B at TP=1
RESULTS = Path(__file__).parent / "results"


def layer_inputs(T):
    """bf16 like serving: q, k after ReLU, g = logsigmoid(gk) / 16."""
    q = torch.randn(T, H, K).relu()
    k = torch.randn(T, HKV, K).relu()
    v = torch.randn(T, HKV, V)
    g = F.logsigmoid(torch.randn(T, HKV, K) * 4) / 16
    return tuple(x.bfloat16() for x in (q, k, v, g))


def prefill(varlen, inputs):
    """One fresh sequence in slot 0; returns (seconds, o, final state)."""
    T = inputs[0].shape[0]
    state = torch.empty(1, HKV, K, V)
    start = time.perf_counter()
    o = varlen(*inputs, state=state, state_indices=torch.tensor([0], dtype=torch.int32),
               cu_seqlens=torch.tensor([0, T], dtype=torch.int32), has_initial_state=torch.tensor([False]),
               scale=K**-0.5)
    return time.perf_counter() - start, o, state[0]


def measure(name, varlen, inputs, repeats):
    times = []
    for r in range(repeats):
        seconds, o, state = prefill(varlen, inputs)
        times.append(seconds)
        print(f"  {name:7s} T={inputs[0].shape[0]:6d} run {r + 1}/{repeats}: {seconds:8.3f} s", flush=True)
    return {"seconds": times, "min_s": min(times), "median_s": statistics.median(times)}, o, state


def gemm_gflops():
    """fp32 rate of the chunked path's main product (queries of 16 tokens x 7 heads against a 128x128 state)."""
    a, b = torch.randn(128, 112, 128), torch.randn(128, 128, 128)
    times = []
    for _ in range(20):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * a.numel() * b.shape[-1] / min(times) / 1e9


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 4096, 16384])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of the chunked backend per length")
    parser.add_argument("--naive-repeats", type=int, default=2, help="timed runs of the naive recurrence per length")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    print(f"GLA prefill, H={H} Hkv={HKV} K={K} V={V}, bf16 inputs, fp32 state, {args.threads} torch threads")
    prefill(gla.gla_varlen, layer_inputs(256))  # warm-up
    load_before = os.getloadavg()
    gflops = gemm_gflops()
    rows = []
    for T in args.lengths:
        inputs = layer_inputs(T)
        chunked, o, state = measure("chunked", gla.gla_varlen, inputs, args.repeats)
        naive, o_ref, state_ref = measure("naive", gla.naive_gla_varlen, inputs, args.naive_repeats)
        rows.append({
            "tokens": T,
            "chunked": chunked,
            "naive": naive,
            "speedup_min": naive["min_s"] / chunked["min_s"],
            "speedup_median": naive["median_s"] / chunked["median_s"],
            "chunked_tokens_per_s": T / chunked["min_s"],
            # any method must compute o_t = q_t S_t: 2*H*K*V flops a token, at best at the GEMM rate
            "speedup_bound_at_gemm_rate": naive["min_s"] / (T * 2 * H * K * V / (gflops * 1e9)),
            "max_abs_diff_output_rel": ((o - o_ref).abs().max() / o_ref.abs().max()).item(),
            "max_abs_diff_state_rel": ((state - state_ref).abs().max() / state_ref.abs().max()).item(),
        })
        print(f"T={T}: chunked {chunked['min_s']:.3f} s, naive {naive['min_s']:.3f} s, "
              f"speedup {rows[-1]['speedup_min']:.1f}x (min of runs)", flush=True)

    RESULTS.mkdir(exist_ok=True)
    result = {
        "benchmark": "GLA prefill of one sequence, one layer, CPU: ops.gla chunked torch backend vs naive recurrence",
        "command": shlex.join([sys.executable, *sys.argv]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads()},
        "torch": torch.__version__,
        "shapes": {"H": H, "Hkv": HKV, "K": K, "V": V, "input_dtype": "bfloat16", "state_dtype": "float32"},
        "chunked_backend": {"function": "vllm_neuronchip.ops.gla.gla_varlen (CPU -> chunk.py)",
                            "chunk_tokens": chunk.CHUNK, "segment_tokens": chunk.SEGMENT},
        "naive_backend": "vllm_neuronchip.ops.gla.naive_gla_varlen: per-token Python loop, fla naive.py style",
        "naive_timing": "measured at every length (no extrapolation)",
        "fp32_gemm_gflops": gflops,
        "load_average_1min_before_after": [load_before[0], os.getloadavg()[0]],
        "results": rows,
    }
    (RESULTS / "gla_cpu_prefill.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(rows, result)
    print(f"wrote {RESULTS / 'gla_cpu_prefill.json'} and {RESULTS / 'gla_cpu_prefill.png'}")


def plot(rows, result):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tokens = [r["tokens"] for r in rows]
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for key, label in [("naive", "naive recurrence"), ("chunked", "chunked torch (ops.gla)")]:
        ax.plot(tokens, [r[key]["min_s"] for r in rows], "o-", label=label)
    for r in rows:  # speedup written between the two curves
        ax.annotate(f"{r['speedup_min']:.1f}x", (r["tokens"], (r["naive"]["min_s"] * r["chunked"]["min_s"]) ** 0.5),
                    ha="center", va="center")
    ax.set(xscale="log", yscale="log", xlabel="prompt tokens", ylabel="seconds (min of runs)", xticks=tokens,
           xticklabels=[str(t) for t in tokens])
    ax.set_title(f"GLA prefill, one 7B layer, {result['machine']['cpu']}, "
                 f"{result['machine']['torch_threads']} threads", fontsize=9)
    ax.legend()
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(RESULTS / "gla_cpu_prefill.png", dpi=120)


if __name__ == "__main__":
    main()
