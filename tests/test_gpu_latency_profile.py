"""The profiles' kernel tables (benchmarks/gpu_latency.py --profile, --profile-decode), on fake profiler events."""

import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"


def gpu_latency():
    sys.path.insert(0, str(BENCHMARKS))  # it imports the serving benchmark's model configs
    try:
        spec = importlib.util.spec_from_file_location("gpu_latency", BENCHMARKS / "gpu_latency.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCHMARKS))
    return module


def event(name, calls, us):
    return SimpleNamespace(key=name, count=calls, self_device_time_total=us)


def test_kernels_by_gpu_time_with_the_rest_summed():
    events = [event("aten::mm", 1, 0.0), event("gemm", 56, 600.0), event("chunk_gla", 14, 300.0),
              event("norm", 57, 60.0), event("copy", 3, 40.0)]
    table = gpu_latency().kernel_table(events, top=2)
    assert table["gpu_ms"] == 1.0
    assert [(r["kernel"], r["calls"], r["ms"]) for r in table["kernels"]] == [
        ("gemm", 56, 0.6), ("chunk_gla", 14, 0.3), ("(2 other kernels)", 60, 0.1)]
    assert abs(sum(r["share"] for r in table["kernels"]) - 1) < 1e-12


def test_decode_kernels_are_the_difference_of_the_two_runs():
    prefilled = [event("gemm", 56, 600.0), event("chunk_gla", 14, 300.0), event("sample", 1, 5.0)]
    generated = [event("gemm", 56 + 112, 900.0), event("chunk_gla", 14, 300.0), event("sample", 3, 15.0),
                 event("gla_decode", 28, 14.0)]
    decode = gpu_latency().decode_events(generated, prefilled)
    assert [(e.key, e.count, e.self_device_time_total) for e in decode] == [
        ("gemm", 112, 300.0), ("sample", 2, 10.0), ("gla_decode", 28, 14.0)]  # the prefill-only kernel dropped
