"""Engine start: `vllm serve` of the tiny checkpoint, launch to a healthy /health, cold and warm.

Cold: vLLM's cache root (model-class inspections, compile caches), Triton's and Inductor's caches all start empty,
as on a new machine or container. Warm: the same server started again with those caches kept. With
`--baseline DIR` (another checkout of this repository, e.g. a git worktree of the previous commit) each repeat
also starts the server on that code (PYTHONPATH=DIR), alternating, so both are measured in the same run.

    python benchmarks/engine_start.py --repeats 3 --baseline /tmp/before --out benchmarks/results/engine_start
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from serving import Server, versions  # the serving benchmark's server and device record
from vllm_neuronchip.cli import tiny_serve_command
from vllm_neuronchip.tiny_checkpoint import save_checkpoint


REPOSITORY = Path(__file__).resolve().parents[1]


def start_seconds(model_dir: Path, caches: Path, code: Path, port: int, log_path: Path, timeout_s: float) -> float:
    """Seconds from launching `vllm serve` on the plugin in `code` to a healthy server, every cache under `caches`
    (run from `model_dir`'s folder: `python -m` puts the working directory ahead of PYTHONPATH)."""
    env = os.environ | {"VLLM_CACHE_ROOT": str(caches / "vllm"), "TRITON_CACHE_DIR": str(caches / "triton"),
                        "TORCHINDUCTOR_CACHE_DIR": str(caches / "inductor"),
                        "PYTHONPATH": os.pathsep.join(filter(None, [str(code), os.environ.get("PYTHONPATH")]))}
    server = Server(tiny_serve_command(model_dir, "tiny", port, max_model_len=1024), log_path, port, env=env,
                    cwd=model_dir.parent)
    try:
        return server.start(timeout_s)
    finally:
        server.stop()


def commit_of(code: Path) -> str:
    """The checkout's commit, "-dirty" when it has uncommitted changes."""
    return subprocess.run(["git", "-C", str(code), "describe", "--always", "--dirty"], capture_output=True,
                          text=True).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--baseline", type=Path, help="another checkout, started alternately with this one")
    parser.add_argument("--port", type=int, default=8031)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="engine-start-"))
    save_checkpoint(work / "model")
    codes = {"this": REPOSITORY} | ({"baseline": args.baseline.resolve()} if args.baseline else {})
    runs = {name: {"cold_s": [], "warm_s": []} for name in codes}
    for repeat in range(args.repeats):
        for name, code in codes.items():
            caches, log_path = work / f"caches_{name}_{repeat}", args.out / f"engine_start_{name}.log"
            for kind in ("cold_s", "warm_s"):
                seconds = start_seconds(work / "model", caches, code, args.port, log_path, args.timeout)
                runs[name][kind].append(round(seconds, 2))
                print(f"[{name}] repeat {repeat} {kind[:-2]} start {seconds:.1f} s", flush=True)
    report = {
        "benchmark": __doc__.split("\n")[0], "command": " ".join(["python", *sys.argv]), **versions(),
        "cpus": os.cpu_count(),
        "code": {name: {"path": str(code), "commit": commit_of(code)} for name, code in codes.items()},
        "runs": runs, "median_s": {name: {kind: statistics.median(v) for kind, v in r.items()} for name, r in runs.items()},
    }
    (args.out / "engine_start.json").write_text(json.dumps(report, indent=2))
    for name, medians in report["median_s"].items():
        print(f"{name}: cold {medians['cold_s']:.1f} s, warm {medians['warm_s']:.1f} s (median of {args.repeats})")


if __name__ == "__main__":
    main()
