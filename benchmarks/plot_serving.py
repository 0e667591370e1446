"""Plots and a markdown table from the serving_<model>.json files that benchmarks/serving.py wrote.

    python benchmarks/plot_serving.py benchmarks/results/gpu [MORE_FOLDERS ...] [--out FOLDER]
writes serving_latency.png (TTFT and batch-1 decode against prompt length), where there are
`vllm bench serve` runs serving_bench.png (throughput and TPOT against concurrency), and where there are capacity
probes serving_capacity.png (requests running at once, measured, beside vLLM's start-up estimate) into the
first folder (or --out), and prints the table. One curve per model (and TP size when above 1); several runs of
one model merge.
"""

import argparse
import json
from pathlib import Path

LABELS = {"spikingbrain": "SpikingBrain-7B (bf16)", "spikingbrain-w8aspike": "SpikingBrain-7B (W8ASpike)",
          "spikingbrain-w8aspike-down": "SpikingBrain-7B (W8ASpike, spiked down_proj)",
          "dense-peer": "dense peer (Qwen2-7B)", "swa-peer": "sliding-window peer (4096)"}


def label(report: dict) -> str:
    """The model's name, with its tensor-parallel size when above 1."""
    args = report.get("serve_args", [])
    tp = int(args[args.index("--tensor-parallel-size") + 1]) if "--tensor-parallel-size" in args else 1
    return LABELS[report["model"]] + (f", TP={tp}" if tp > 1 else "")


def merge(first: dict, later: dict) -> dict:
    """Two runs of one model: per-length rows and bench runs of both (the later run's row where both measured
    a length); every other field from the first run unless only the later one has it (e.g. a warm start)."""
    rows = {r["prompt_tokens"]: r for r in first.get("per_length", []) + later.get("per_length", [])}
    return later | first | {"per_length": [rows[n] for n in sorted(rows)],
                            "bench_serve": first.get("bench_serve", []) + later.get("bench_serve", [])}


def load(*folders: Path) -> dict[str, dict]:
    """Every serving_*.json of the folders, keyed by its label; runs of the same model and TP size merge, in
    folder then file-name order."""
    reports = {}
    for path in (path for folder in folders for path in sorted(folder.glob("serving_*.json"))):
        report = json.loads(path.read_text())
        if report.get("model") in LABELS:
            name = label(report)
            reports[name] = merge(reports[name], report) if name in reports else report
    if not reports:
        raise SystemExit(f"no serving_<model>.json in {', '.join(map(str, folders))}")
    return reports


def measured(report: dict, key: str) -> tuple[list[int], list[float]]:
    rows = [r for r in report.get("per_length", []) if key in r]
    return [r["prompt_tokens"] for r in rows], [r[key] for r in rows]


def plot(reports: dict[str, dict], folder: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    device = next(iter(reports.values()))["device"]
    fig, (ttft, decode) = plt.subplots(1, 2, figsize=(12, 4.5))
    for model, report in reports.items():
        ttft.plot(*measured(report, "ttft_s"), marker="o", label=model)
        decode.plot(*measured(report, "decode_tokens_per_s"), marker="o", label=model)
    for axis, title, unit in ((ttft, "time to first token", "s"), (decode, "decode at batch 1", "tokens/s")):
        axis.set(xscale="log", xlabel="prompt tokens", ylabel=unit, title=title)
        axis.grid(alpha=0.3)
    ttft.set_yscale("log")
    decode.set_ylim(0, 1.1 * decode.get_ylim()[1])  # flat decode curves would touch the frame
    decode.legend(loc="lower right")
    fig.suptitle(f"vllm serve, dummy weights, {device}")
    fig.tight_layout()
    fig.savefig(folder / "serving_latency.png", dpi=120)

    probed = {model: report for model, report in reports.items() if report.get("probe")}
    if probed:
        fig, axis = plt.subplots(figsize=(7, 4.5))
        names = list(probed)
        axis.bar([i - 0.2 for i in range(len(names))], [r["probe"]["peak_running"] for r in probed.values()], 0.4,
                 label="measured: peak running")
        axis.bar([i + 0.2 for i in range(len(names))],
                 [r.get("max_concurrency_at_max_model_len") or 0 for r in probed.values()], 0.4,
                 label="vLLM's start-up estimate")
        axis.set_xticks(range(len(names)), names)
        axis.set_ylabel("requests at once")
        lengths = sorted({r["probe"]["prompt_tokens"] for r in probed.values()})
        axis.set_title(f"concurrent {'/'.join(f'{n // 1024}K' for n in lengths)} prompts in the same KV memory, {device}")
        axis.legend()
        fig.tight_layout()
        fig.savefig(folder / "serving_capacity.png", dpi=120)

    if not any(report.get("bench_serve") for report in reports.values()):
        return
    fig, (throughput, tpot) = plt.subplots(1, 2, figsize=(12, 4.5))
    for model, report in reports.items():
        sweep = report.get("bench_serve", [])
        if sweep:
            c = [s["concurrency"] for s in sweep]
            throughput.plot(c, [s["output_throughput"] for s in sweep], marker="o", label=model)
            tpot.plot(c, [s["median_tpot_ms"] for s in sweep], marker="o", label=model)
    for axis, title, unit in ((throughput, "output throughput", "tokens/s"), (tpot, "median TPOT", "ms")):
        axis.set(xscale="log", xlabel="concurrency", ylabel=unit, title=title)
        axis.grid(alpha=0.3)
    throughput.legend()
    fig.suptitle(f"vllm bench serve, random 8K in / 256 out, {device}")
    fig.tight_layout()
    fig.savefig(folder / "serving_bench.png", dpi=120)


def table(reports: dict[str, dict]) -> str:
    lengths = sorted({r["prompt_tokens"] for rep in reports.values() for r in rep.get("per_length", [])})
    head = "| | engine start cold / warm (s) | KV capacity (tokens) | max concurrency at max_model_len | " + " | ".join(
        f"TTFT {n} (s) / decode (tok/s)" for n in lengths) + " |"
    lines = [head, "|" + "---|" * (4 + len(lengths))]
    for model, rep in reports.items():
        by_length = {r["prompt_tokens"]: r for r in rep.get("per_length", [])}
        cells = []
        for n in lengths:
            r = by_length.get(n, {})
            cells.append("error" if "error" in r else (
                f"{r['ttft_s']:.3f} / {r.get('decode_tokens_per_s', float('nan')):.1f}" if r else "-"))
        warm = rep.get("engine_warm_start_s")
        start = f"{rep.get('engine_start_s', float('nan')):.0f} / {warm:.0f}" if warm else f"{rep.get('engine_start_s', 0):.0f} / -"
        lines.append(f"| {model} | {start} | {rep.get('kv_cache_tokens') or 0:,.0f} | "
                     f"{rep.get('max_concurrency_at_max_model_len') or 0:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", type=Path, nargs="+")
    parser.add_argument("--out", type=Path, help="where the plots go (default: the first folder)")
    args = parser.parse_args()
    reports = load(*args.folders)
    plot(reports, args.out or args.folders[0])
    print(table(reports))


if __name__ == "__main__":
    main()
