"""Time to first token and batch-1 decode speed on one GPU: SpikingBrain-7B against its peers.

Dummy weights, bf16, CUDA graphs on (vLLM defaults), prefix caching off so every prompt is computed.
Peers: the dense Qwen2-7B shapes, and the same with a 4096-token window on every layer.
Writes one JSON per model under --out, with the command, device and versions.

    python benchmarks/gpu_latency.py --model spikingbrain --lengths 4096 32768 131072 --out results/

`--profile LENGTH` runs the engine in-process and records one prefill of LENGTH tokens with the torch profiler:
`profile_{model}_{LENGTH}.json` lists the GPU kernels by their total time in that prefill (where TTFT goes).
`--profile-decode CONTEXT` records --decode-tokens decode steps after a CONTEXT-token prompt the same way
(`profile_decode_{model}_{CONTEXT}.json`, GPU and wall time per token: where decode goes, and how long the GPU
waits between steps).
"""

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

from serving import (  # the same model configs as the serving benchmark
    MODELS,
    SHAPES,
    model_config,
)

PROFILE_TOP = 40
"""Kernels listed in a profile (the rest summed as one row)."""


def timed_generate(llm, prompt_len: int, max_tokens: int, seed: int) -> float:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    ids = [random.Random(seed).randrange(1000, 150000) for _ in range(prompt_len)]
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    start = time.perf_counter()
    llm.generate([TokensPrompt(prompt_token_ids=ids)], params, use_tqdm=False)
    return time.perf_counter() - start


def cuda_median_us(fn, warmup: int, repeats: int) -> float:
    """fn()'s median time in us over `repeats` calls after `warmup` ones, by CUDA events around each call (also the
    ops benchmarks' timer)."""
    import torch

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3)
    return statistics.median(times)


def kernel_table(events, top: int = PROFILE_TOP) -> dict:
    """The profiler's averaged events -> GPU kernels by self device time: the `top` largest, the rest summed."""
    kernels = sorted(((e.key, e.count, e.self_device_time_total) for e in events if e.self_device_time_total > 0),
                     key=lambda kernel: -kernel[2])
    total_us = sum(us for _, _, us in kernels)
    rows = [{"kernel": name, "calls": calls, "ms": us / 1e3, "share": us / total_us}
            for name, calls, us in kernels[:top]]
    rest_us = sum(us for _, _, us in kernels[top:])
    if rest_us:
        rows.append({"kernel": f"({len(kernels) - top} other kernels)", "calls": sum(c for _, c, _ in kernels[top:]),
                     "ms": rest_us / 1e3, "share": rest_us / total_us})
    return {"gpu_ms": total_us / 1e3, "kernels": rows}


def profile_prefill(llm, length: int) -> dict:
    """One prefill of `length` tokens (one output token) under the torch profiler; the engine must be in-process."""
    import torch

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as profiler:
        wall_s = timed_generate(llm, length, 1, seed=length + 7)
    return {"prompt_tokens": length, "wall_s": wall_s} | kernel_table(profiler.key_averages())


def decode_events(generated, prefilled) -> list:
    """Profiler events of a prompt plus decode steps less those of the same prompt with one output token, kernel by
    kernel: the decode steps' own kernels (ones that did not run more often or longer are dropped)."""
    before = {e.key: e for e in prefilled}
    events = []
    for e in generated:
        base = before.get(e.key)
        calls, us = e.count - (base.count if base else 0), e.self_device_time_total - (
            base.self_device_time_total if base else 0.0)
        if calls > 0 and us > 0:
            events.append(SimpleNamespace(key=e.key, count=calls, self_device_time_total=us))
    return events


def profile_decode(llm, context: int, tokens: int) -> dict:
    """`tokens` batch-1 decode steps after a `context`-token prompt under the torch profiler (engine in-process):
    the same prompt profiled with 1 and with 1 + `tokens` output tokens, their difference per kernel."""
    import torch

    runs = []
    for max_tokens in (1, 1 + tokens):
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as profiler:
            wall_s = timed_generate(llm, context, max_tokens, seed=context + 7)
        runs.append((wall_s, profiler.key_averages()))
    (prefill_s, prefilled), (generate_s, generated) = runs
    table = kernel_table(decode_events(generated, prefilled))
    return {"context_tokens": context, "decode_tokens": tokens,
            "wall_ms_per_token": (generate_s - prefill_s) * 1e3 / tokens,
            "gpu_ms_per_token": table["gpu_ms"] / tokens} | table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=MODELS, required=True)
    parser.add_argument("--lengths", type=int, nargs="+", default=[4096, 32768, 131072])
    parser.add_argument("--decode-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--profile", type=int, metavar="LENGTH", help="also profile one prefill of LENGTH tokens")
    parser.add_argument("--profile-decode", type=int, metavar="CONTEXT",
                        help="also profile --decode-tokens decode steps after a CONTEXT-token prompt")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.profile or args.profile_decode:  # the profiler sees the GPU kernels only of an engine in this process
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"

    import torch
    import vllm
    from vllm import LLM

    max_len = max(args.lengths + [args.profile or 0, args.profile_decode or 0]) + args.decode_tokens + 16
    model_dir = Path(tempfile.mkdtemp(prefix=f"{args.model}-"))
    (model_dir / "config.json").write_text(json.dumps(model_config(args.model, SHAPES["7b"], max_len)))
    start = time.perf_counter()
    llm = LLM(
        model=str(model_dir), load_format="dummy", skip_tokenizer_init=True, dtype="bfloat16",
        max_model_len=max_len, enable_prefix_caching=False, max_num_seqs=16, gpu_memory_utilization=0.9,
        quantization="w8aspike" if args.model.startswith("spikingbrain-w8aspike") else None,
    )
    engine_start_s = time.perf_counter() - start
    print(f"[{args.model}] engine start {engine_start_s:.1f} s", flush=True)
    timed_generate(llm, 512, 8, seed=0)  # warm-up

    results = []
    for length in args.lengths:
        ttft = [timed_generate(llm, length, 1, seed=length + r) for r in range(args.repeats)]
        total = [timed_generate(llm, length, args.decode_tokens + 1, seed=length + 100 + r) for r in range(args.repeats)]
        decode_s = min(total) - min(ttft)
        row = {
            "prompt_tokens": length, "ttft_s": ttft, "ttft_min_s": min(ttft),
            "prefill_tokens_per_s": length / min(ttft),
            "decode_tokens": args.decode_tokens, "generate_s": total,
            "decode_tokens_per_s": args.decode_tokens / decode_s,
        }
        print(f"[{args.model}] {json.dumps(row)}", flush=True)
        results.append(row)

    args.out.mkdir(parents=True, exist_ok=True)
    profiles = {}
    if args.profile:
        profiles[f"profile_{args.model}_{args.profile}.json"] = profile_prefill(llm, args.profile)
    if args.profile_decode:
        profiles[f"profile_decode_{args.model}_{args.profile_decode}.json"] = profile_decode(
            llm, args.profile_decode, args.decode_tokens)
    for name, profile in profiles.items():
        profile |= {"model": args.model, "device": torch.cuda.get_device_name(0),
                    "command": " ".join([Path(sys.executable).name, *sys.argv])}
        (args.out / name).write_text(json.dumps(profile, indent=1))
        print(f"[{args.model}] {name}: {profile['gpu_ms']:.2f} ms of GPU time"
              + (f", {profile['gpu_ms_per_token']:.3f} of {profile['wall_ms_per_token']:.3f} ms a token"
                 if "gpu_ms_per_token" in profile else ""))
        for row in profile["kernels"][:15]:
            print(f"[{args.model}] {row['ms']:9.2f} ms {row['share']:6.1%} x{row['calls']:<5d} {row['kernel'][:90]}")
    report = {
        "benchmark": "TTFT and batch-1 decode, dummy weights, bf16, CUDA graphs on, prefix caching off",
        "model": args.model, "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "device": torch.cuda.get_device_name(0), "vllm": vllm.__version__, "torch": torch.__version__,
        "python": platform.python_version(),
        "env": {k: v for k, v in os.environ.items() if k.startswith(("VLLM_", "NEURONCHIP_"))},
        "engine_start_s": engine_start_s,
        "decode_method": "(t(prompt + 1 + N tokens) - t(prompt + 1 token)) / N, min over repeats",
        "results": results,
    }
    (args.out / f"gpu_latency_{args.model}.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
