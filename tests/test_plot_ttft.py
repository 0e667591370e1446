"""benchmarks/plot_ttft.py on the committed H100 session: runs sharing a label joined, table and PNG written."""

import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"
SESSION = BENCHMARKS / "results/gpu/h100/session_2026-12-07_1630"


def plot(*arguments: str, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCHMARKS / "plot_ttft.py"), *arguments, "--out", str(out)],
                          capture_output=True, text=True, timeout=120)


def test_plot_of_the_h100_session(tmp_path):
    out = tmp_path / "ttft.png"
    run = plot(f"ours={SESSION}/4_ttft_fla_and_triton/triton/results_from_log.json",
               f"ours={SESSION}/6_ttft_long_triton/triton_long/gpu_latency_spikingbrain.json",
               f"dense peer={SESSION}/5_ttft_peers/gpu_latency_dense-peer.json", out=out)
    assert run.returncode == 0, run.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = {line.split("  ")[0]: line.split() for line in run.stdout.splitlines()}
    assert rows["ours"][1:] == ["0.722", "s", "2.968", "s", "11.952", "s", "23.935", "s"]  # both runs on one line
    assert rows["dense peer"][2:] == ["0.958", "s", "7.959", "s", "-", "-"]


def test_a_run_without_a_label_is_refused(tmp_path):
    run = plot(f"{SESSION}/5_ttft_peers/gpu_latency_dense-peer.json", out=tmp_path / "ttft.png")
    assert run.returncode != 0 and "expected LABEL=PATH" in run.stderr
