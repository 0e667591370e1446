"""Where one GLA layer's prefill time goes, fla against triton_chunk, from a `gla_prefill.py` result.

Per case, one stacked bar per path: the GPU time of each of its kernels (torch profiler, one call), and a black
mark at the call's wall time (CUDA events, median); the gap between the two is the GPU waiting for launches.

    python benchmarks/plot_gla_prefill.py benchmarks/results/gpu/h100/gla_prefill_2026-12-07/gla_prefill.json
"""

import argparse
import json
from pathlib import Path

PATHS = ("fla", "triton")


def short(kernel: str) -> str:
    """A kernel's name without template arguments and launch details; the profile's summed rest as 'other kernels'."""
    if kernel.startswith("("):
        return "other kernels"
    name = kernel.split("(")[0].split("<")[0].removeprefix("void ").strip()
    return name.split("::")[-1][:40]


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("result", type=Path, help="gla_prefill.json")
    parser.add_argument("--out", type=Path, help="PNG to write (default: gla_prefill.png beside the result)")
    args = parser.parse_args()
    result = json.loads(args.result.read_text())
    out = args.out or args.result.with_name("gla_prefill.png")

    names = sorted({short(row["kernel"]) for case in result["cases"] for path in PATHS
                    for row in case["kernels"][path]["kernels"]})
    colors = dict(zip(names, plt.get_cmap("tab20").colors * 2))
    fig, ax = plt.subplots(figsize=(12, 5))
    labels, positions, x = [], [], 0.0
    for case in result["cases"]:
        for path in PATHS:
            bottom = 0.0
            for row in case["kernels"][path]["kernels"]:
                name = short(row["kernel"])
                ax.bar(x, row["ms"], bottom=bottom, color=colors[name], label=name, width=0.7)
                bottom += row["ms"]
            ax.plot([x - 0.35, x + 0.35], [case[f"{path}_us"] / 1e3] * 2, color="black", linewidth=2,
                    label="wall time (CUDA events)")
            labels.append(f"{case['case']}\n{path}")
            positions.append(x)
            x += 1
        x += 0.5
    ax.set_xticks(positions, labels, fontsize=8)
    ax.set_ylabel("ms per call (bars: GPU time by kernel)")
    ax.set_title(f"GLA prefill of one 7B layer: fla against triton_chunk ({result['device']})")
    handles = dict(zip(*reversed(ax.get_legend_handles_labels())))  # one entry per label
    ax.legend(handles.values(), handles.keys(), fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
