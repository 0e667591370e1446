"""GPU debugging aid: the tiny fp32 model against the reference under variants, each in its own process
(eager, in-process engine); prints PASS/FAIL and the error lines. Variants are picked by substring:

    VLLM_ENABLE_V1_MULTIPROCESSING=0 python benchmarks/gpu_debug_tiny.py "ops alone" "as-test" "V1 runner"

Cold Triton caches make the first variant slow (fla compiles its autotuned kernels: minutes)."""
import json
import os
import subprocess
import sys
import time

TIMEOUT_S = 300

CHILD = r'''
import json, sys
from tests.model.test_matches_reference import MIXED_LENGTHS, assert_matches_reference, generate, make_llm, random_prompt
from vllm_neuronchip.tiny_checkpoint import TinySpec, save_checkpoint
spec_kw, overrides = json.loads(sys.argv[1]), json.loads(sys.argv[2])
import tempfile, pathlib
d = pathlib.Path(tempfile.mkdtemp())
spec = TinySpec(**spec_kw)
tensors = save_checkpoint(d, spec, shards=1)
llm = make_llm(d, **overrides)
prompts = [random_prompt(n, seed=n) for n in MIXED_LENGTHS]
out = generate(llm, prompts)
for p, o in zip(prompts, out):
    assert_matches_reference(o, p, tensors, spec.config())
alone = [generate(llm, [random_prompt(n, seed=1000 + n)])[0] for n in (1, 40, 1)]
for n, o in zip((1, 40, 1), alone):
    assert_matches_reference(o, random_prompt(n, seed=1000 + n), tensors, spec.config())
print("MATCHES THE REFERENCE")
'''

OPS = r'''
import torch
from vllm_neuronchip.ops import gla
torch.manual_seed(0)
for lens in ([64], [1, 5, 31, 27], [33, 31], [1], [100, 200]):
    T, H, Hkv, K = sum(lens), 2, 1, 64
    q, k, v = torch.rand(T, H, K, device="cuda"), torch.rand(T, Hkv, K, device="cuda"), torch.randn(T, Hkv, K, device="cuda")
    g = -torch.rand(T, Hkv, K, device="cuda")
    state = torch.zeros(10, Hkv, K, K, device="cuda")
    cu = torch.tensor([0] + lens, device="cuda").cumsum(0).int()
    slots = torch.arange(len(lens), device="cuda", dtype=torch.int32)
    warm = torch.zeros(len(lens), dtype=torch.bool, device="cuda")
    o = gla.gla_varlen(q, k, v, g, state=state, state_indices=slots, cu_seqlens=cu, has_initial_state=warm, scale=0.125)
    torch.cuda.synchronize()
    o_ref = gla.naive_gla_varlen(q.cpu(), k.cpu(), v.cpu(), g.cpu(), state=torch.zeros(10, Hkv, K, K), state_indices=slots.cpu(), cu_seqlens=cu.cpu(), has_initial_state=warm.cpu(), scale=0.125)
    error = (o.cpu() - o_ref).abs().max().item()
    print(lens, "varlen max err", error, flush=True)
    assert error <= 2e-3 * o_ref.abs().max().item(), "fla varlen differs from the naive recurrence"  # tf32 dots
    n = len(lens)
    od = gla.gla_decode(q[:n], k[:n], v[:n], g[:n], state=state, state_indices=slots, has_initial_state=~warm, scale=0.125)
    torch.cuda.synchronize()
    print(lens, "decode ok", flush=True)
print("MATCHES THE REFERENCE")
'''

VARIANTS = [
    ("gla ops alone, tiny shapes fp32 blocking", None, None, {"CUDA_LAUNCH_BLOCKING": "1"}),
    ("as-test eager fp32 V2 blocking", {}, {"kv_cache_memory_bytes": 256 << 20}, {"CUDA_LAUNCH_BLOCKING": "1"}),
    ("no prefix caching", {}, {"kv_cache_memory_bytes": 256 << 20, "enable_prefix_caching": False}, {}),
    ("V1 runner", {}, {"kv_cache_memory_bytes": 256 << 20}, {"VLLM_USE_V2_MODEL_RUNNER": "0"}),
    ("bf16 (crash check; tokens may differ)", {}, {"kv_cache_memory_bytes": 256 << 20, "dtype": "bfloat16"}, {}),
    ("head_dim 128", {"hidden_size": 256}, {"kv_cache_memory_bytes": 256 << 20}, {}),
    ("graphs as-test", {}, {"kv_cache_memory_bytes": 256 << 20, "enforce_eager": False}, {}),
    ("graphs blocking", {}, {"kv_cache_memory_bytes": 256 << 20, "enforce_eager": False}, {"CUDA_LAUNCH_BLOCKING": "1"}),
    ("graphs no prefix caching", {}, {"kv_cache_memory_bytes": 256 << 20, "enforce_eager": False,
                                      "enable_prefix_caching": False}, {}),
    ("graphs piecewise", {}, {"kv_cache_memory_bytes": 256 << 20, "enforce_eager": False,
                              "compilation_config": {"cudagraph_mode": "PIECEWISE"}}, {}),
    ("graphs V1 runner", {}, {"kv_cache_memory_bytes": 256 << 20, "enforce_eager": False},
     {"VLLM_USE_V2_MODEL_RUNNER": "0"}),
    ("graphs FLEX_ATTENTION", {}, {"kv_cache_memory_bytes": 256 << 20, "enforce_eager": False,
                                   "attention_backend": "FLEX_ATTENTION"}, {}),
    ("FLEX_ATTENTION", {}, {"kv_cache_memory_bytes": 256 << 20, "attention_backend": "FLEX_ATTENTION"}, {}),
]

def main():
    only = sys.argv[1:]
    for name, spec_kw, overrides, env in VARIANTS:
        if only and not any(o in name for o in only):
            continue
        t = time.time()
        code = OPS if spec_kw is None else CHILD
        try:
            r = subprocess.run([sys.executable, "-c", code, json.dumps(spec_kw), json.dumps(overrides)],
                               env=os.environ | env, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired as timeout:
            out = b"".join((timeout.stdout or b"", timeout.stderr or b"")).decode(errors="replace")
            print(f"=== {name}: TIMEOUT after {TIMEOUT_S} s\n" + out[-3000:], flush=True)
            continue
        ok = r.returncode == 0 and "MATCHES THE REFERENCE" in r.stdout
        print(f"=== {name}: {'PASS' if ok else f'FAIL rc={r.returncode}'} ({time.time() - t:.0f} s)", flush=True)
        if not ok:
            lines = [l for l in (r.stdout + r.stderr).splitlines() if l.strip()]
            keep = [l for l in lines if any(w in l for w in ("Error", "error", "File \"", "assert", "line "))]
            print("\n".join(keep[-40:]), flush=True)

if __name__ == "__main__":
    main()
