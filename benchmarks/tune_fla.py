"""Autotune fla's GLA prefill kernels once on this GPU at the SpikingBrain-7B shapes and record the winners,
for `vllm_neuronchip/ops/gla/fla_configs.py` to pin on a cold start.

Two fresh processes, each with an empty Triton cache, run our `gla_varlen` (fla chunk_gla, varlen, fp32 as the
model calls it): the first lets fla autotune (what a cold engine start paid so far) and records the winners; the
second pins them. Each times its first call (compile, and the autotune in the first) and the steady call;
the pinned output must equal the autotuned one. Writes `fla_tune.json` (timings) and `fla_configs.json` (the
packaged table with this GPU's entry replaced) to --out:

    python benchmarks/tune_fla.py --out /tmp/out && cp /tmp/out/fla_configs.json vllm_neuronchip/ops/gla/
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, sys, time
import torch
from vllm_neuronchip.ops.gla import fla, fla_configs
mode, tokens, heads, kv_heads, head_dim, result = sys.argv[1], *map(int, sys.argv[2:6]), sys.argv[6]
torch.manual_seed(0)
lengths = [tokens // 2, tokens // 4, tokens // 4]
q = torch.randn(tokens, heads, head_dim, device="cuda")
k, v = (torch.randn(tokens, kv_heads, head_dim, device="cuda") for _ in range(2))
g = -torch.rand(tokens, kv_heads, head_dim, device="cuda") * 0.1
state = torch.randn(4, kv_heads, head_dim, head_dim, device="cuda")
cu_seqlens = torch.tensor([0] + lengths, device="cuda").cumsum(0).int()
slots = torch.arange(3, device="cuda", dtype=torch.int32)
warm = torch.tensor([True, False, True], device="cuda")

def call():
    s = state.clone()
    torch.cuda.synchronize()
    start = time.perf_counter()
    o = fla.gla_varlen(q, k, v, g, state=s, state_indices=slots, cu_seqlens=cu_seqlens, has_initial_state=warm,
                       scale=head_dim ** -0.5)
    torch.cuda.synchronize()
    return time.perf_counter() - start, o, s

first_s, o, s = call()
steady_s = min(call()[0] for _ in range(5))
torch.save({"o": o.cpu(), "state": s.cpu()}, result + ".pt")
json.dump({"first_call_s": first_s, "steady_call_ms": steady_s * 1e3, "winners": fla_configs.winners(),
           "candidates": {n: len(t.configs) for n, t in fla_configs.autotuners().items()}}, open(result, "w"))
"""


def run_child(mode: str, args, work: Path, env: dict) -> dict:
    result = work / f"{mode}.json"
    cache = tempfile.mkdtemp(prefix=f"triton-{mode}-", dir=work)
    command = [sys.executable, "-c", CHILD, mode, str(args.tokens), str(args.heads), str(args.kv_heads),
               str(args.head_dim), str(result)]
    subprocess.run(command, env=os.environ | env | {"TRITON_CACHE_DIR": cache}, check=True)
    return json.loads(result.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tokens", type=int, default=8192, help="prefill tokens of the step (3 sequences)")
    parser.add_argument("--heads", type=int, default=28)
    parser.add_argument("--kv-heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=128)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    import torch
    import triton

    from vllm_neuronchip.ops import gpu_tables
    from vllm_neuronchip.ops.gla import fla_configs

    gpu = torch.cuda.get_device_name()
    shapes = {k: v for k, v in vars(args).items() if k != "out"}
    work = Path(tempfile.mkdtemp(prefix="tune-fla-"))
    tuned = run_child("autotune", args, work, {"NEURONCHIP_FLA_AUTOTUNE": "1"})
    table = json.loads(fla_configs.TABLE.read_text())
    table[gpu] = {"triton": triton.__version__, "arch": gpu_tables.device_arch(), "tuned_at": shapes,
                  "kernels": tuned["winners"]}
    (args.out / "fla_configs.json").write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    pinned = run_child("pinned", args, work, {"NEURONCHIP_FLA_CONFIGS": str(args.out / "fla_configs.json")})

    a, b = torch.load(work / "autotune.json.pt"), torch.load(work / "pinned.json.pt")
    same = all(torch.equal(a[n], b[n]) for n in a)
    error = max((a[n] - b[n]).abs().max().item() for n in a)
    report = {
        "device": gpu, "triton": triton.__version__, "torch": torch.__version__, "command": " ".join(sys.argv),
        "shapes": shapes,
        "autotune": {k: tuned[k] for k in ("first_call_s", "steady_call_ms", "candidates")},
        "pinned": {k: pinned[k] for k in ("first_call_s", "steady_call_ms")},
        "outputs_identical": same, "max_abs_difference": error, "winners": tuned["winners"],
    }
    (args.out / "fla_tune.json").write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: report[k] for k in ("device", "autotune", "pinned", "outputs_identical",
                                             "max_abs_difference")}, indent=1))
    if error > 1e-4 * max(b["o"].abs().max().item(), 1.0):
        sys.exit("pinned configs changed the output beyond fp32 rounding")


if __name__ == "__main__":
    main()
