"""Bar chart of W8ASpike linears against bf16 from `w8aspike_gemm.py` results (compare mode), one M.

Each LABEL=PATH names a w8aspike_gemm.json; bars per projection shape: bf16 `F.linear` (from the first file,
measured in its own call) and the W8ASpike linear (quantizer + GEMM, real-checkpoint-like overflow codes) of each
file. Times in microseconds, log scale.

    python benchmarks/plot_w8aspike.py --m 4096 --out prefill.png before=a/w8aspike_gemm.json after=b/w8aspike_gemm.json
"""

import argparse
import json
from pathlib import Path


def times(path: Path, m: int) -> dict[str, tuple[float, float]]:
    """shape -> (bf16 s, W8ASpike s) at M = m."""
    rows = json.loads(path.read_text())["results"]
    return {row["shape"]: (row["bf16_s"], row["overflow_s"]) for row in rows if row["M"] == m}


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", metavar="LABEL=PATH")
    parser.add_argument("--m", type=int, default=4096)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    paths = dict(run.split("=", 1) for run in args.runs)
    runs = {label: times(Path(path), args.m) for label, path in paths.items()}
    device = json.loads(Path(next(iter(paths.values()))).read_text())["device"]
    shapes = list(next(iter(runs.values())))
    bars = {"bf16": [next(iter(runs.values()))[s][0] for s in shapes]}
    bars |= {f"W8ASpike, {label}": [timed[s][1] for s in shapes] for label, timed in runs.items()}
    width = 0.8 / len(bars)
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for i, (label, seconds) in enumerate(bars.items()):
        positions = [x + i * width for x in range(len(shapes))]
        ax.bar(positions, [s * 1e6 for s in seconds], width, label=label)
    ax.set_xticks([x + width * (len(bars) - 1) / 2 for x in range(len(shapes))], shapes)
    ax.set_yscale("log")
    ax.set_ylabel("microseconds per linear (log)")
    ax.set_title(f"W8ASpike linear against bf16 at M = {args.m} ({device})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
