"""SpikingBrain-7B and its peers behind `vllm serve`, measured through the OpenAI API.

One model per run (one GPU call each), dummy weights, bf16, vLLM's defaults otherwise (CUDA graphs and
torch.compile on), prefix caching off, the same memory and batching limits for every model:
  - engine start: `vllm serve` launch to a healthy /health (cold on a fresh machine; `--warm-restart`
    starts it a second time, with compile caches warm);
  - KV-cache capacity from the server log: tokens, and vLLM's own "maximum concurrency" at max_model_len;
  - per prompt length, one streamed request of a text prompt (`length` words, one token each): time to
    first token and batch-1 decode tokens/s over `--decode-tokens` tokens, from vLLM's own /metrics
    histograms (the client's time to first token, HTTP included, is kept beside it);
  - `vllm bench serve` (random dataset, 8K in / 256 out) at each `--concurrency`;
  - `--probe LENGTH REQUESTS` (with `--kv-cache-memory-gib` for the same budget in every model): all
    requests at once with outputs of `--probe-output` tokens (long enough to outlive the others' admission),
    and the peak of vLLM's running-request gauge
    with the KV-cache usage there, i.e. how many fit at the same time (see `peak_running`).
Models: spikingbrain (ours), spikingbrain-w8aspike (ours, `--quantization w8aspike`: down_proj in float, spec D7),
spikingbrain-w8aspike-down (the same with the opt-in `spike_down_proj`), dense-peer (Qwen2-7B shapes), swa-peer
(the same with a 4096-token window on every layer). Writes serving_<model>.json under --out.

    python benchmarks/serving.py --model spikingbrain --lengths 4096 32768 131072 --out benchmarks/results/gpu
    python benchmarks/serving.py --model dense-peer --shape tiny --lengths 64 --concurrency 2 --out /tmp/x  # CPU smoke
"""

import argparse
import json
import math
import os
import platform
import random
import re
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from vllm_neuronchip import ARCHITECTURE, MODEL_TYPE
from vllm_neuronchip.cli import stop_server, vllm_command, wait_until_healthy

SHAPES = {
    "7b": dict(
        vocab_size=152064, hidden_size=3584, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
        intermediate_size=18944,
    ),
    "tiny": dict(
        vocab_size=384, hidden_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=256,
    ),
}
WINDOW = 4096
MODELS = ("spikingbrain", "spikingbrain-w8aspike", "spikingbrain-w8aspike-down", "dense-peer", "swa-peer")


def model_config(model: str, shape: dict, max_len: int) -> dict:
    """config.json of the model under test, with the shape's sizes."""
    if model.startswith("spikingbrain"):
        from vllm_neuronchip.model_executor.config import GLAswaConfig

        # As released: max_position_embeddings 131072; the plugin sizes RoPE to max_model_len.
        config = GLAswaConfig(**shape, sliding_window=WINDOW).to_diff_dict()
        for key in ("dtype", "head_dim", "layer_types", "transformers_version"):
            config.pop(key, None)
        if model == "spikingbrain-w8aspike-down":
            config["quantization_config"] = {"quant_method": "w8aspike", "spike_down_proj": True}
        return config | {"architectures": ["GLAswaForCausalLM"], "torch_dtype": "bfloat16"}
    qwen2 = shape | {
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_act": "silu", "rms_norm_eps": 1e-6,
        "rope_theta": 1e6, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
        "max_position_embeddings": max_len, "use_sliding_window": False, "sliding_window": WINDOW,
        "max_window_layers": shape["num_hidden_layers"],
    }
    if model == "swa-peer":
        qwen2 |= {"use_sliding_window": True, "max_window_layers": 0}
    return qwen2


ALPHABET = string.digits + string.ascii_letters


def word(i: int, vocab_size: int) -> str:
    """Token i as a fixed-width base-62 word: 3 characters for 152,064 ids, so a prompt stays under vLLM's
    limit of 4 characters per token of max_model_len."""
    width = max(1, math.ceil(math.log(vocab_size, len(ALPHABET))))
    digits = []
    for _ in range(width):
        i, digit = divmod(i, len(ALPHABET))
        digits.append(ALPHABET[digit])
    return "".join(reversed(digits))


def word_tokenizer(vocab_size: int):
    """A tokenizer covering every id of the model ("<unk>", "<eos>", then one word per id, split on spaces),
    so any generated id detokenizes and a prompt of n words is exactly n tokens (also for `vllm bench serve`)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<eos>": 1} | {word(i, vocab_size): i for i in range(2, vocab_size)}
    words = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    words.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=words, unk_token="<unk>", eos_token="<eos>",
                                   model_max_length=1 << 21)


def write_model(directory: Path, model: str, shape: dict, max_len: int) -> None:
    """config.json under directory/model, the word tokenizer under directory/tokenizer: kept apart, because
    beside a config of model_type qwen2, transformers 5 loads it as a Qwen2 BPE tokenizer (empty encodings). The
    tokenizer's folder holds a config of our model type, which has no tokenizer of its own: without one, vLLM's API
    server and engine each retried reading a config there and waited 2 s, 4 s of every measured engine start."""
    (directory / "model").mkdir(parents=True, exist_ok=True)
    (directory / "model" / "config.json").write_text(json.dumps(model_config(model, shape, max_len), indent=2))
    word_tokenizer(shape["vocab_size"]).save_pretrained(directory / "tokenizer")
    (directory / "tokenizer" / "config.json").write_text(json.dumps({"model_type": MODEL_TYPE,
                                                                     "architectures": [ARCHITECTURE]}))


def parse_kv_capacity(log: str) -> dict:
    """KV-cache figures vLLM logs at start: tokens, GiB, and maximum concurrency at max_model_len."""
    def last(pattern):
        found = re.findall(pattern, log)
        return float(found[-1].replace(",", "")) if found else None

    return {
        "kv_cache_tokens": last(r"KV cache size: ([\d,]+) tokens"),
        "available_kv_cache_gib": last(r"Available KV cache memory: ([\d.]+) GiB"),
        "max_concurrency_at_max_model_len": last(r"Maximum concurrency for [\d,]+ tokens per request: ([\d.,]+)x"),
    }


class Server:
    """A `vllm serve` command in a subprocess (optionally its own environment and working directory), its log in a
    file; `start()` returns seconds to healthy."""

    def __init__(self, command: list[str], log_path: Path, port: int, env: dict | None = None,
                 cwd: Path | None = None):
        self.command, self.log_path, self.url = command, log_path, f"http://127.0.0.1:{port}"
        self.env, self.cwd, self.process = env, cwd, None

    def start(self, timeout_s: float) -> float:
        began = time.perf_counter()
        with open(self.log_path, "a") as log:
            self.process = subprocess.Popen(self.command, env=self.env, cwd=self.cwd, stdout=log,
                                            stderr=subprocess.STDOUT)
        try:
            wait_until_healthy(self.url, self.process, timeout_s)
        except Exception:
            print(self.log_path.read_text()[-6000:], file=sys.stderr)
            self.stop()
            raise
        return time.perf_counter() - began

    def stop(self) -> None:
        if self.process is not None:
            stop_server(self.process)
            self.process = None


ENGINE_TIMINGS = {  # Prometheus histograms whose sums, taken around one request, time it inside vLLM
    "ttft_s": "vllm:time_to_first_token_seconds_sum",
    "prefill_s": "vllm:request_prefill_time_seconds_sum",
    "decode_s": "vllm:request_decode_time_seconds_sum",
}


def read_metrics(url: str, metrics: dict[str, str]) -> dict[str, float]:
    """{key: value summed over label sets} of the Prometheus `metrics` {key: name} at /metrics."""
    import requests

    text = requests.get(f"{url}/metrics", timeout=30).text
    return {key: sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(metric + "{"))
            for key, metric in metrics.items()}


CAPACITY_GAUGES = {"running": "vllm:num_requests_running", "waiting": "vllm:num_requests_waiting",
                   "kv_cache_usage": "vllm:kv_cache_usage_perc"}


def peak_running(client, url: str, name: str, prompts: list[str], max_tokens: int, settle_s: float = 30.0,
                 limit_s: float = 240.0) -> dict:
    """How many requests of this length the server holds at the same time. All prompts are sent at once, streamed,
    with outputs of `max_tokens` (long, so that early requests are still decoding while later ones are admitted:
    with short outputs the running count measures prefill throughput, not capacity). vLLM's running, waiting and
    KV-cache-usage gauges are sampled until nothing waits (all fit at once), or the running count has not grown
    for `settle_s` while requests wait (the cache is full, or vLLM admits no more), or `limit_s`; then every
    request is aborted by closing its stream. The usage at the peak tells the two plateaus apart."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    stop, lock, streams = threading.Event(), threading.Lock(), []

    def request(prompt: str) -> None:
        stream = client.completions.create(model=name, prompt=prompt, max_tokens=max_tokens, temperature=0.0,
                                           stream=True, extra_body={"ignore_eos": True})
        with lock:
            streams.append(stream)
        try:
            for _ in stream:
                if stop.is_set():
                    break
        except Exception:
            if not stop.is_set():  # after the stop, the main thread closed this stream under the reader
                raise
        finally:
            stream.close()  # the server aborts a request whose client has gone

    began = grew = time.perf_counter()
    peak, reason = {"running": 0.0}, "all finished"
    with ThreadPoolExecutor(len(prompts)) as pool:
        futures = [pool.submit(request, p) for p in prompts]
        while not all(f.done() for f in futures):
            gauges, now = read_metrics(url, CAPACITY_GAUGES), time.perf_counter()
            if gauges["running"] > peak["running"]:
                peak, grew = gauges, now
            if gauges["running"] >= len(prompts):
                reason = "all admitted"
            elif gauges["waiting"] > 0 and now - grew > settle_s:
                reason = f"no growth for {settle_s:.0f} s while requests waited"
            elif now - began > limit_s:
                reason = f"time limit {limit_s:.0f} s"
            else:
                time.sleep(0.25)
                continue
            break
        with lock:  # abort all, waiting ones included (their readers block until a first chunk otherwise)
            stop.set()
            for stream in streams:
                stream.close()
    failed = [f.exception() for f in futures if f.exception() is not None]
    return {"requests": len(prompts), "max_tokens": max_tokens, "peak_running": peak["running"],
            "kv_cache_usage_at_peak": peak.get("kv_cache_usage"), "waiting_at_peak": peak.get("waiting"),
            "stopped": reason, "failed": len(failed), "first_error": str(failed[0])[:300] if failed else None,
            "seconds": time.perf_counter() - began}


def streamed_request(client, url: str, name: str, prompt: str, decode_tokens: int) -> dict:
    """One streamed completion of a text prompt. Client side: time to the first streamed token. vLLM side
    (its /metrics histograms, read before and after): time to first token, prefill time, and decode
    tokens/s = (generated - 1) / decode time, free of HTTP and streaming effects."""
    before = read_metrics(url, ENGINE_TIMINGS)
    began = time.perf_counter()
    stream = client.completions.create(
        model=name, prompt=prompt, max_tokens=decode_tokens + 1, temperature=0.0, stream=True,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
    )
    first, usage = None, None
    for chunk in stream:
        if chunk.choices and first is None:
            first = time.perf_counter()
        usage = chunk.usage or usage
    after = read_metrics(url, ENGINE_TIMINGS)
    engine = {key: after[key] - before[key] for key in ENGINE_TIMINGS}
    row = {"prompt_tokens": usage.prompt_tokens, "generated_tokens": usage.completion_tokens,
           "client_ttft_s": first - began, "ttft_s": engine["ttft_s"], "prefill_s": engine["prefill_s"]}
    if usage.completion_tokens > 1 and engine["decode_s"] > 0:
        row["decode_tokens_per_s"] = (usage.completion_tokens - 1) / engine["decode_s"]
    return row


def random_prompt(length: int, vocab_size: int, seed: int) -> str:
    """`length` random words of `word_tokenizer`: exactly `length` tokens."""
    rnd = random.Random(seed)
    return " ".join(word(rnd.randrange(2, vocab_size), vocab_size) for _ in range(length))


def bench_serve(server: Server, name: str, tokenizer_dir: Path, concurrency: int, input_len: int,
                output_len: int, out_dir: Path) -> dict:
    """`vllm bench serve` on the random dataset at one concurrency; its saved JSON, trimmed."""
    filename = f"bench_{name}_c{concurrency}.json"
    subprocess.run(vllm_command(
        "bench", "serve", "--backend", "vllm", "--base-url", server.url, "--model", name,
        "--tokenizer", str(tokenizer_dir), "--dataset-name", "random", "--random-input-len", str(input_len),
        "--random-output-len", str(output_len), "--num-prompts", str(max(4, concurrency)),
        "--max-concurrency", str(concurrency), "--ignore-eos", "--seed", "0", "--disable-tqdm",
        "--save-result", "--result-dir", str(out_dir), "--result-filename", filename,
    ), check=True, stdout=subprocess.DEVNULL)
    saved = json.loads((out_dir / filename).read_text())
    (out_dir / filename).unlink()
    keys = ("completed", "duration", "total_input_tokens", "total_output_tokens", "request_throughput",
            "output_throughput", "total_token_throughput", "mean_ttft_ms", "median_ttft_ms", "p99_ttft_ms",
            "mean_tpot_ms", "median_tpot_ms", "p99_tpot_ms", "mean_itl_ms")
    return {"concurrency": concurrency} | {k: saved[k] for k in keys if k in saved}


def cpu_model() -> str:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    fields = dict(line.split(":", 1) for line in lscpu.splitlines() if ":" in line)
    return fields.get("Model name", platform.processor()).strip()


def versions() -> dict:
    import torch
    import vllm

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else cpu_model()
    return {"device": device, "vllm": vllm.__version__, "torch": torch.__version__,
            "python": platform.python_version()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=MODELS, required=True)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="7b")
    parser.add_argument("--lengths", type=int, nargs="+", default=[4096, 32768, 131072])
    parser.add_argument("--repeats", type=int, default=2, help="requests per length up to 32K (min TTFT kept)")
    parser.add_argument("--decode-tokens", type=int, default=128)
    parser.add_argument("--decode-only", type=int, nargs="*", default=[1024],
                        help="extra context lengths measured for decode (TTFT recorded too)")
    parser.add_argument("--concurrency", type=int, nargs="*", default=[1, 16, 64, 256])
    parser.add_argument("--bench-input-len", type=int, default=8192)
    parser.add_argument("--bench-output-len", type=int, default=256)
    parser.add_argument("--max-num-batched-tokens", type=int, default=16384)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    parser.add_argument("--tensor-parallel-size", type=int, default=1)
    parser.add_argument("--kv-cache-memory-gib", type=float, help="fixed KV-cache budget (instead of utilization)")
    parser.add_argument("--probe", type=int, nargs=2, metavar=("LENGTH", "REQUESTS"),
                        help="send REQUESTS prompts of LENGTH tokens at once; record the peak running")
    parser.add_argument("--probe-output", type=int, default=2048,
                        help="tokens each probe request generates (the context is sized for them): requests must "
                             "outlive the admission of all the others, or the peak measures prefill throughput")
    parser.add_argument("--probe-limit", type=float, default=240.0,
                        help="seconds the probe may run (every admitted prompt is prefilled first: 128K prompts "
                             "take a few seconds each)")
    parser.add_argument("--warm-restart", action="store_true", help="start the engine a second time (warm start)")
    parser.add_argument("--port", type=int, default=8021)
    parser.add_argument("--start-timeout", type=float, default=420)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    shape = SHAPES[args.shape]
    lengths = sorted(set(args.lengths) | set(args.decode_only))
    probe_length = [args.probe[0] + args.probe_output] if args.probe else []
    max_len = max(lengths + probe_length + [args.bench_input_len + args.bench_output_len]) + args.decode_tokens + 16
    work = Path(tempfile.mkdtemp(prefix=f"{args.model}-"))
    write_model(work, args.model, shape, max_len)
    args.out.mkdir(parents=True, exist_ok=True)
    run_name = args.model + (f"_{args.shape}" if args.shape != "7b" else "") + (
        f"_tp{args.tensor_parallel_size}" if args.tensor_parallel_size > 1 else "")
    log_path = args.out / f"serving_{run_name}.log"
    log_path.write_text("")
    serve_args = [
        str(work / "model"), "--tokenizer", str(work / "tokenizer"), "--served-model-name", args.model,
        "--host", "127.0.0.1", "--port", str(args.port),
        "--load-format", "dummy", "--dtype", "bfloat16", "--max-model-len", str(max_len),
        "--max-num-batched-tokens", str(args.max_num_batched_tokens), "--no-enable-prefix-caching",
        "--gpu-memory-utilization", str(args.gpu_memory_utilization),
    ]
    if args.model.startswith("spikingbrain-w8aspike"):
        serve_args += ["--quantization", "w8aspike"]
    if args.tensor_parallel_size > 1:
        serve_args += ["--tensor-parallel-size", str(args.tensor_parallel_size)]
    if args.kv_cache_memory_gib:
        serve_args += ["--kv-cache-memory-bytes", str(int(args.kv_cache_memory_gib * 2**30))]
    report = {
        "benchmark": __doc__.split("\n")[0], "model": args.model, "shape": args.shape,
        "command": " ".join(["python", *sys.argv]), "serve_args": serve_args[1:], **versions(),
        "env": {k: v for k, v in os.environ.items() if k.startswith(("VLLM_", "NEURONCHIP_"))},
    }
    out_json = args.out / f"serving_{run_name}.json"

    def save(**fields):
        report.update(fields)
        out_json.write_text(json.dumps(report, indent=2))

    from openai import OpenAI

    server = Server(vllm_command("serve", *serve_args), log_path, args.port)
    try:
        save(engine_start_s=server.start(args.start_timeout))
        save(**parse_kv_capacity(log_path.read_text()))
        print(f"[{args.model}] engine start {report['engine_start_s']:.1f} s", flush=True)
        client = OpenAI(base_url=f"{server.url}/v1", api_key="unused", timeout=3600)
        streamed_request(client, server.url, args.model, random_prompt(min(256, max_len // 2), shape["vocab_size"], 0), 8)  # warm-up
        rows = []
        for length in lengths:
            repeats = args.repeats if length <= 32768 else 1
            try:
                tries = [streamed_request(client, server.url, args.model,
                                          random_prompt(length, shape["vocab_size"], length + r), args.decode_tokens)
                         for r in range(repeats)]
                row = min(tries, key=lambda t: t["ttft_s"]) | {"ttft_all_s": [t["ttft_s"] for t in tries]}
            except Exception as error:  # e.g. a length beyond what fits: record it and go on
                row = {"prompt_tokens": length, "error": f"{type(error).__name__}: {error}"[:500]}
            print(f"[{args.model}] {json.dumps(row)}", flush=True)
            rows.append(row)
            save(per_length=rows)
        if args.probe:
            length, count = args.probe
            prompts = [random_prompt(length, shape["vocab_size"], 10**6 + i) for i in range(count)]
            save(probe={"prompt_tokens": length} | peak_running(client, server.url, args.model, prompts,
                                                                args.probe_output, limit_s=args.probe_limit))
            print(f"[{args.model}] probe {json.dumps(report['probe'])}", flush=True)
        sweeps = []
        for concurrency in args.concurrency:
            sweeps.append(bench_serve(server, args.model, work / "tokenizer", concurrency, args.bench_input_len,
                                      args.bench_output_len, args.out))
            print(f"[{args.model}] bench serve {json.dumps(sweeps[-1])}", flush=True)
            save(bench_serve=sweeps)
        server.stop()
        if args.warm_restart:
            save(engine_warm_start_s=server.start(args.start_timeout))
            print(f"[{args.model}] warm engine start {report['engine_warm_start_s']:.1f} s", flush=True)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
