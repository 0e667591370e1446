"""Times the GLA prefill of one SpikingBrain-7B layer on a CUDA GPU: fla's chunk_gla as `ops/gla/fla.py` calls it
(k, v, g and states repeated over the query heads) against our GQA-aware kernels (`ops/gla/triton_chunk.py`).

Inputs are fp32 column slices of one packed [T, (H + 3 Hkv) d] tensor, as the model's GLA layer passes them. Each
case first compares both paths' outputs and final states (largest difference relative to the largest magnitude;
over 2e-3 the run fails, after timing and writing everything), then times each path with CUDA events (warm-up
calls, median of --repeats) and lists the GPU kernels of one call of each (torch profiler). Prints a table and
writes gla_prefill.json to --out:

    python benchmarks/gla_prefill.py --out /tmp/out
"""

import argparse
import dataclasses
import functools
import importlib.metadata
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from gpu_latency import cuda_median_us, kernel_table

TOLERANCE = 2e-3  # fp32 dots run in tf32 in both paths
CASES = {  # name: (sequence lengths, whether they continue from a state)
    "1 x 4096": ([4096], False),
    "1 x 16384": ([16384], False),
    "4 x 4096 warm": ([4096] * 4, True),
}


def make_case(lengths, warm, heads, kv_heads, head_dim):
    """(q, k, v, g views of one packed tensor, prefill keyword arguments) on the GPU; state slots 1.. of 8."""
    T, d = sum(lengths), head_dim
    columns = [heads * d, kv_heads * d, kv_heads * d, kv_heads * d]
    packed = torch.randn(T, sum(columns), device="cuda")
    q, k, v, g = packed.split(columns, dim=1)
    q.relu_(), k.relu_()  # the model's feature map
    g.copy_(F.logsigmoid(g * 4) / 16)  # the model's gate
    q, k, v, g = (x.view(T, -1, d) for x in (q, k, v, g))
    n = len(lengths)
    kwargs = dict(
        state=torch.randn(n + 4, kv_heads, d, d, device="cuda") * 0.1,
        state_indices=torch.arange(1, n + 1, dtype=torch.int32, device="cuda"),
        cu_seqlens=torch.tensor([0, *lengths], device="cuda").cumsum(0),  # int64, shared by the calls, as in the engine
        has_initial_state=torch.full((n,), warm, device="cuda"),
        scale=d**-0.5,
    )
    return (q, k, v, g), kwargs


def relative_difference(actual, expected) -> float:
    return ((actual - expected).abs().max() / expected.abs().max().clamp_min(1e-6)).item()


def check(paths, inputs, kwargs) -> dict:
    """Outputs and final states of each path from the same initial state; their relative differences."""
    results = {}
    for name, varlen in paths.items():
        state = kwargs["state"].clone()
        o = varlen(*inputs, **(kwargs | {"state": state}))
        results[name] = o, state[kwargs["state_indices"].long()]
    (o_ref, s_ref), (o, s) = results.values()
    return {"output": relative_difference(o, o_ref), "state": relative_difference(s, s_ref)}


def median_us(varlen, inputs, kwargs, warmup, repeats) -> float:
    state = kwargs["state"].clone()  # each call continues the last one's states: the work is the same
    return cuda_median_us(lambda: varlen(*inputs, **(kwargs | {"state": state})), warmup, repeats)


def kernels(varlen, inputs, kwargs) -> dict:
    """One call under the torch profiler: its GPU kernels by total time (where each path spends it)."""
    state = kwargs["state"].clone()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as profiler:
        varlen(*inputs, **(kwargs | {"state": state}))
        torch.cuda.synchronize()
    return kernel_table(profiler.key_averages(), top=8)


PREVIOUS_TILES = dict(scan_bk=32, scan_bv=32, scan_warps=8, scores_warps=4, output_warps=8, gc_fp64=True)
"""The defaults before the 2026-12-07 sweep: timed beside the current ones."""


def sweep_tiles(default) -> list:
    """triton_chunk.Tiles alternatives: the previous defaults, then one change each to the current ones."""
    changes = [PREVIOUS_TILES, dict(gc_fp64=True), dict(scan_bk=32, scan_warps=8), dict(scan_bk=16, scan_bv=16),
               dict(scan_bk=32, scan_bv=16), dict(scan_warps=2), dict(scan_prefetch=True), dict(scores_warps=1),
               dict(scores_warps=4), dict(output_warps=2), dict(output_warps=8), dict(output_bv=32),
               dict(output_bv=128, output_warps=8), dict(heads_first=True)]
    return [dataclasses.replace(default, **change) for change in changes]


def sweep(triton_chunk, fla_varlen, inputs, kwargs, args) -> list[dict]:
    """Each Tiles alternative checked against fla, then timed."""
    rows = []
    for tiles in sweep_tiles(triton_chunk.Tiles()):
        varlen = functools.partial(triton_chunk.gla_varlen, tiles=tiles)
        differences = check({"fla": fla_varlen, "triton": varlen}, inputs, kwargs)
        us = median_us(varlen, inputs, kwargs, args.warmup, args.repeats)
        rows.append({"tiles": dataclasses.asdict(tiles), "triton_us": us, "relative_difference": differences,
                     "agrees": max(differences.values()) <= TOLERANCE})
        print(f"  sweep {us:8.0f} us  agrees={rows[-1]['agrees']}  {tiles}", flush=True)
    return rows


def version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for gla_prefill.json")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--heads", type=int, default=28)
    parser.add_argument("--kv-heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--sweep", action="store_true", help="also time triton_chunk.Tiles alternatives (16K-token cases)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("gla_prefill.py needs a CUDA GPU")

    import triton

    from vllm_neuronchip.ops.gla import fla, triton_chunk

    paths = {"fla": fla.gla_varlen, "triton": triton_chunk.gla_varlen}
    torch.manual_seed(0)
    rows, disagreements = [], []
    for case, (lengths, warm) in CASES.items():
        inputs, kwargs = make_case(lengths, warm, args.heads, args.kv_heads, args.head_dim)
        differences = check(paths, inputs, kwargs)
        print(f"{case}: triton vs fla, max |difference| / max |fla|: output {differences['output']:.2e}, "
              f"final states {differences['state']:.2e}", flush=True)
        if max(differences.values()) > TOLERANCE:  # timed all the same, and the run fails at the end
            disagreements.append(case)
            print(f"{case}: triton and fla differ by more than {TOLERANCE} (relative to the largest magnitude)")
        us = {name: median_us(varlen, inputs, kwargs, args.warmup, args.repeats) for name, varlen in paths.items()}
        profiles = {name: kernels(varlen, inputs, kwargs) for name, varlen in paths.items()}
        for name, profile in profiles.items():
            listed = ", ".join(f"{row['kernel'][:40]} {row['ms'] * 1e3:.0f} us" for row in profile["kernels"])
            print(f"  {name}: {listed}")
        rows.append({"case": case, "tokens": sum(lengths), "lengths": lengths, "warm": warm,
                     "fla_us": us["fla"], "triton_us": us["triton"], "fla_over_triton": us["fla"] / us["triton"],
                     "relative_difference": differences, "kernels": profiles})
        if args.sweep and sum(lengths) >= 16384:
            rows[-1]["sweep"] = sweep(triton_chunk, fla.gla_varlen, inputs, kwargs, args)
        del inputs, kwargs
        torch.cuda.empty_cache()

    print(f"\n{'case':<16}{'tokens':>8}{'fla µs':>12}{'triton µs':>12}{'fla/triton':>12}")
    for row in rows:
        print(f"{row['case']:<16}{row['tokens']:>8}{row['fla_us']:>12.0f}{row['triton_us']:>12.0f}"
              f"{row['fla_over_triton']:>12.2f}")
    result = {
        "command": [sys.executable, *sys.argv], "device": torch.cuda.get_device_name(),
        "versions": {"torch": torch.__version__, "triton": triton.__version__, "fla-core": version("fla-core")},
        "shape": {"heads": args.heads, "kv_heads": args.kv_heads, "head_dim": args.head_dim, "dtype": "float32"},
        "repeats": args.repeats, "warmup": args.warmup, "cases": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gla_prefill.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out / 'gla_prefill.json'}")
    if disagreements:
        sys.exit(f"triton and fla disagree beyond {TOLERANCE} in: {', '.join(disagreements)}")


if __name__ == "__main__":
    main()
