"""Time to first token and batch-1 decode speed on one GPU: SpikingBrain-7B against its peers.

Dummy weights, bf16, CUDA graphs on (vLLM defaults), prefix caching off so every prompt is computed.
Peers: the dense Qwen2-7B shapes, and the same with a 4096-token window on every layer.
Writes one JSON per model under --out, with the command, device and versions.

    python benchmarks/gpu_latency.py --model spikingbrain --lengths 4096 32768 131072 --out results/
"""

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

from serving import (  # the same model configs as the serving benchmark
    SHAPES,
    model_config,
)


def timed_generate(llm, prompt_len: int, max_tokens: int, seed: int) -> float:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    ids = [random.Random(seed).randrange(1000, 150000) for _ in range(prompt_len)]
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    start = time.perf_counter()
    llm.generate([TokensPrompt(prompt_token_ids=ids)], params, use_tqdm=False)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["spikingbrain", "dense-peer", "swa-peer"], required=True)
    parser.add_argument("--lengths", type=int, nargs="+", default=[4096, 32768, 131072])
    parser.add_argument("--decode-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    import torch
    import vllm
    from vllm import LLM

    max_len = max(args.lengths) + args.decode_tokens + 16
    model_dir = Path(tempfile.mkdtemp(prefix=f"{args.model}-"))
    (model_dir / "config.json").write_text(json.dumps(model_config(args.model, SHAPES["7b"], max_len)))
    start = time.perf_counter()
    llm = LLM(
        model=str(model_dir), load_format="dummy", skip_tokenizer_init=True, dtype="bfloat16",
        max_model_len=max_len, enable_prefix_caching=False, max_num_seqs=16, gpu_memory_utilization=0.9,
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
    report = {
        "benchmark": "TTFT and batch-1 decode, dummy weights, bf16, CUDA graphs on, prefix caching off",
        "model": args.model, "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "device": torch.cuda.get_device_name(0), "vllm": vllm.__version__, "torch": torch.__version__,
        "python": platform.python_version(), "env": {k: v for k, v in os.environ.items() if k.startswith("VLLM_")},
        "engine_start_s": engine_start_s, "decode_method": "(t(prompt + 1 + N tokens) - t(prompt + 1 token)) / N, min over repeats",
        "results": results,
    }
    (args.out / f"gpu_latency_{args.model}.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
