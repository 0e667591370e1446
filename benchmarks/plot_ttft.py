"""Time to first token against prompt length, one line per run, from `gpu_latency.py` results, with the GPU
issue's H100 targets marked. Each argument is LABEL=PATH of a JSON with a "results" list (prompt_tokens,
ttft_min_s); runs sharing a label are joined into one line. Prints the table it plots:

    python benchmarks/plot_ttft.py "ours=a/gpu_latency_spikingbrain.json" "ours=b/gpu_latency_spikingbrain.json" \
        "dense peer=c/gpu_latency_dense-peer.json" --out ttft.png
"""

import argparse
import json
from pathlib import Path

TARGETS_S = {32768: 0.75, 131072: 3.1, 524288: 12.5, 1048576: 25.0}
"""The GPU issue's TTFT targets on one H100, by prompt length."""


def load(runs: list[str]) -> dict[str, dict[int, float]]:
    """{label: {prompt tokens: fastest TTFT in s}} from LABEL=PATH arguments."""
    lines: dict[str, dict[int, float]] = {}
    for run in runs:
        label, sep, path = run.partition("=")
        if not sep or not label or not path:
            raise SystemExit(f"expected LABEL=PATH, got {run!r}")
        for row in json.loads(Path(path).read_text())["results"]:
            lines.setdefault(label, {})[row["prompt_tokens"]] = row["ttft_min_s"]
    return lines


def table(lines: dict[str, dict[int, float]]) -> str:
    lengths = sorted({n for points in lines.values() for n in points} | set(TARGETS_S))
    rows = [["prompt"] + [f"{n // 1024}K" for n in lengths]]
    rows += [[label] + [f"{points[n]:.3f} s" if n in points else "-" for n in lengths]
             for label, points in lines.items()]
    rows.append(["target"] + [f"<= {TARGETS_S[n]} s" if n in TARGETS_S else "-" for n in lengths])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) for row in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="LABEL=PATH of a gpu_latency.py JSON")
    parser.add_argument("--title", default="Time to first token, one H100")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    args = parser.parse_args()
    lines = load(args.runs)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, points in lines.items():
        lengths = sorted(points)
        ax.plot(lengths, [points[n] for n in lengths], marker="o", label=label)
    ax.scatter(list(TARGETS_S), list(TARGETS_S.values()), marker="_", s=400, color="black", label="target")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("prompt tokens")
    ax.set_ylabel("time to first token (s)")
    ax.set_title(args.title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(table(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
