"""benchmarks/plot_gla_prefill.py on the committed H100 result: kernel names shortened, one PNG written."""

import importlib.util
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"
RESULT = BENCHMARKS / "results/gpu/h100/gla_prefill_2026-12-07/gla_prefill.json"


def test_kernel_names_are_shortened():
    spec = importlib.util.spec_from_file_location("plot_gla_prefill", BENCHMARKS / "plot_gla_prefill.py")
    plot = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plot)
    assert plot.short("void at::native::elementwise_kernel<128, 4, at::native::gpu_kernel_impl_nocast<...>>(int)") \
        == "elementwise_kernel"
    assert plot.short("gla_chunk_scan_kernel") == "gla_chunk_scan_kernel"
    assert plot.short("(18 other kernels)") == "other kernels"


def test_plot_of_the_h100_result(tmp_path):
    out = tmp_path / "gla_prefill.png"
    run = subprocess.run([sys.executable, str(BENCHMARKS / "plot_gla_prefill.py"), str(RESULT), "--out", str(out)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
