"""Times the spike statistics a W8ASpike linear records for one prefill input on a CUDA GPU: the torch reference
(`ops/spike/stats.py`, on int64 counts) against the one-pass Triton kernel (`ops/spike/triton_stats.py`, on the
encoder's int32 counts), same run, results compared first. Counts like the encoder's: round(x / vth), x normal.
Prints a table and writes spike_stats.json to --out:

    python benchmarks/spike_stats.py --out /tmp/out
"""

import argparse
import json
import sys
from pathlib import Path

import torch
from gpu_latency import cuda_median_us

from vllm_neuronchip.ops.spike import stats, triton_stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--rows", type=int, nargs="+", default=[16, 4096, 16384])
    parser.add_argument("--k", type=int, default=3584, help="input features (the 7B hidden size)")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("spike_stats.py needs a CUDA GPU")
    torch.manual_seed(0)
    rows = []
    for m in args.rows:
        counts = (torch.randn(m, args.k, device="cuda") * 4).round().int()
        wide = counts.long()
        expected = stats.spike_stats(wide, fan_out=4608).to_dict()
        agrees = triton_stats.spike_stats(counts, fan_out=4608).to_dict() == expected
        reference_us = cuda_median_us(lambda: stats.spike_stats(wide, fan_out=4608), 1, args.repeats)
        triton_us = cuda_median_us(lambda: triton_stats.spike_stats(counts, fan_out=4608), 1, args.repeats)
        rows.append({"rows": m, "k": args.k, "agrees": agrees, "reference_us": reference_us, "triton_us": triton_us,
                     "reference_over_triton": reference_us / triton_us})
        print(f"M={m:>6} K={args.k}  reference {reference_us:9.1f} us  triton {triton_us:8.1f} us  "
              f"x{reference_us / triton_us:.1f}  agrees={agrees}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"command": [sys.executable, *sys.argv], "device": torch.cuda.get_device_name(),
              "torch": torch.__version__, "rows": rows}
    (args.out / "spike_stats.json").write_text(json.dumps(result, indent=1))
    if not all(row["agrees"] for row in rows):
        sys.exit("the Triton statistics differ from the reference")


if __name__ == "__main__":
    main()
