"""benchmarks/plot_serving.py on the committed H100 session: two folders, one curve per model, plots in --out."""

import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"
SESSION = BENCHMARKS / "results/gpu/h100/session_2026-12-07_1825"


def test_plots_and_table_from_two_folders(tmp_path):
    run = subprocess.run([sys.executable, str(BENCHMARKS / "plot_serving.py"), str(SESSION / "2_bf16_serve"),
                          str(SESSION / "3_w8aspike_start"), "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    for name in ("serving_latency.png", "serving_bench.png"):  # bench runs: the bf16 folder's
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in run.stdout.splitlines()[2:]}
    assert set(rows) == {"SpikingBrain-7B (bf16)", "SpikingBrain-7B (W8ASpike)"}
    assert rows["SpikingBrain-7B (bf16)"][5] == "0.106 / 164.9"  # the 4K column
    assert rows["SpikingBrain-7B (W8ASpike)"][5] == "0.206 / 197.9"
    assert rows["SpikingBrain-7B (W8ASpike)"][6] == "-"  # 32K: not measured for W8ASpike


def test_folders_without_reports_are_refused(tmp_path):
    run = subprocess.run([sys.executable, str(BENCHMARKS / "plot_serving.py"), str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode != 0 and "no serving_<model>.json in" in run.stderr
