"""Our one-token GEMV (`ops/gemv.py`) against cuBLAS (`F.linear`, vLLM's unquantized linear on CUDA) on the
SpikingBrain-7B projection shapes at M = 1, bf16, one GPU, CUDA graphs.

Each shape is first checked against the exact (fp64) result, within the GEMV's error bound
(`gemv.share_of_error_bound`, else the run fails), then each path is timed as w8aspike_gemm.py times its linears:
a CUDA graph of back-to-back calls cycling over weight copies that do not fit in L2, median over replays. A decode
step runs each shape `LAYERS_PER_SHAPE` times; the summary adds the saving up per token. `--sweep` also times other
launch settings (`gemv.Launch`), each checked first. Prints a table and writes decode_gemv.json to --out:

    python benchmarks/decode_gemv.py [--sweep] --out /tmp/out
"""

import argparse
import dataclasses
import itertools
import json
import sys
import time
from functools import partial
from pathlib import Path

from w8aspike_gemm import copies_of, copy_count, timed

SHAPES = {  # name: (N, K, bias), per rank at TP=1
    "qkv_proj (SWA)": (4608, 3584, True),
    "qkv_proj + gk_proj.0 (GLA)": (4624, 3584, True),
    "o_proj": (3584, 3584, False),
    "gate_up_proj": (37888, 3584, False),
    "down_proj": (3584, 18944, False),
}
LAYERS_PER_SHAPE = {"qkv_proj (SWA)": 14, "qkv_proj + gk_proj.0 (GLA)": 14, "o_proj": 28, "gate_up_proj": 28,
                    "down_proj": 28}


def sweep_launches():
    """The settings --sweep times: rows 4-16 a program, columns 256-1024 a step (at most 8192 a tile), 4 or 8 warps,
    2 or 4 stages."""
    from vllm_neuronchip.ops.gemv import Launch

    return [Launch(block_n, block_k, warps, stages)
            for block_n, block_k, warps, stages in itertools.product((4, 8, 16), (256, 512, 1024), (4, 8), (2, 4))
            if block_n * block_k <= 8192]


def cublas_linear(x, weights, bias, i):
    import torch.nn.functional as F

    return F.linear(x, weights[i % len(weights)], bias)


def our_gemv(x, weights, bias, launch, i):
    from vllm_neuronchip.ops.gemv import gemv

    return gemv(x, weights[i % len(weights)], bias, launch)


def check(x, weight, bias, launch) -> None:
    from vllm_neuronchip.ops.gemv import gemv, share_of_error_bound

    share = share_of_error_bound(gemv(x, weight, bias, launch), x, weight, bias, launch)
    if share > 1:
        sys.exit(f"gemv with {launch} is {share:.2f}x its error bound from the exact result at {tuple(weight.shape)}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="directory for decode_gemv.json")
    parser.add_argument("--calls", type=int, default=28, help="linears per graph")
    parser.add_argument("--replays", type=int, default=50, help="graph replays per timing")
    parser.add_argument("--sweep", action="store_true", help="also time every launch setting of sweep_launches()")
    args = parser.parse_args()

    import torch
    import triton

    from vllm_neuronchip.ops.gemv import Launch

    if not torch.cuda.is_available():
        sys.exit("decode_gemv needs a CUDA GPU")
    began, rows, default = time.perf_counter(), [], Launch()
    for name, (N, K, has_bias) in SHAPES.items():
        generator = torch.Generator("cuda").manual_seed(N + K)
        weight = (torch.randn(N, K, device="cuda", generator=generator) * 0.02).bfloat16()
        bias = torch.randn(N, device="cuda", generator=generator).bfloat16() if has_bias else None
        x = torch.randn(1, K, device="cuda", generator=generator).bfloat16()
        weights = copies_of(weight, copy_count(weight))
        row = {"shape": name, "N": N, "K": K, "bias": has_bias, "copies": len(weights),
               "cublas_s": timed(partial(cublas_linear, x, weights, bias), args.calls, args.replays)}
        settings = []
        for launch in [default, *(sweep_launches() if args.sweep else [])]:
            check(x, weight, bias, launch)
            seconds = timed(partial(our_gemv, x, weights, bias, launch), args.calls, args.replays)
            settings.append(dataclasses.asdict(launch) | {"s": seconds})
        row["gemv_s"] = settings[0]["s"]
        if args.sweep:
            row["sweep"], row["fastest"] = settings, min(settings, key=lambda setting: setting["s"])
        row["speedup"] = row["cublas_s"] / row["gemv_s"]
        row["gemv_weight_GBps"] = weight.nbytes / row["gemv_s"] / 1e9
        row["saved_per_token_us"] = (row["cublas_s"] - row["gemv_s"]) * LAYERS_PER_SHAPE[name] * 1e6
        rows.append(row)
        fastest = (f"  fastest {row['fastest']['s'] * 1e6:.1f} us "
                   f"{ {k: v for k, v in row['fastest'].items() if k != 's'} }" if args.sweep else "")
        print(f"{name:27s} {N:6d} x {K:5d}  cuBLAS {row['cublas_s'] * 1e6:7.1f} us  gemv {row['gemv_s'] * 1e6:7.1f} us "
              f"(x{row['speedup']:.3f}, {row['gemv_weight_GBps']:5.0f} GB/s)  "
              f"{row['saved_per_token_us']:6.1f} us a token{fastest}", flush=True)
        del weights, weight
        torch.cuda.empty_cache()
    saved = sum(row["saved_per_token_us"] for row in rows)
    print(f"a decode step's linears (lm_head aside): {saved:.0f} us saved a token")
    report = {
        "device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
        "command": " ".join([Path(sys.executable).name, *sys.argv]), "seconds": time.perf_counter() - began,
        "launch": dataclasses.asdict(default),
        "timing": "CUDA graph of `calls` linears over distinct weight copies, median of replays / calls",
        "calls": args.calls, "replays": args.replays, "saved_per_token_us": saved, "results": rows,
    }
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "decode_gemv.json").write_text(json.dumps(report, indent=1) + "\n")
        print(f"wrote {args.out / 'decode_gemv.json'}")


if __name__ == "__main__":
    main()
