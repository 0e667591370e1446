"""Per-layer spike statistics of W8ASpike GEMM inputs, accumulated on the device while serving.

The worker's W8ASpike linears record into `RECORDER`. Read it in-process with `RECORDER.snapshot()`,
from any engine with `llm.collective_rpc(spike_stats_snapshot)`, or on the server's `/metrics`: each
worker writes its snapshot to NEURONCHIP_SPIKE_STATS_DIR at most once a second, and a Prometheus
collector in the API server reads those files when scraped. Definitions: `ops/spike/stats.py`.
"""

import atexit
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from vllm_neuronchip.ops.spike.stats import SpikeStats, spike_stats
from vllm_neuronchip.settings import NeuronChipSettings

STATS_DIR_ENV = "NEURONCHIP_SPIKE_STATS_DIR"
FLUSH_INTERVAL_S = 1.0


def stats_dir() -> str | None:
    """The settings' spike_stats_dir, read afresh: the first process sets it after startup."""
    return NeuronChipSettings().spike_stats_dir


class SpikeRecorder:
    def __init__(self) -> None:
        self.layers: dict[str, SpikeStats] = {}
        self.flushed_at = 0.0

    def record(self, layer: str, spike_counts: torch.Tensor, fan_out: int) -> None:
        if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
            return  # a captured graph would replay the add into stale buffers: statistics skip graph replays
        stats = spike_stats(spike_counts, fan_out)
        self.layers[layer] = self.layers[layer] + stats if layer in self.layers else stats
        if time.monotonic() - self.flushed_at >= FLUSH_INTERVAL_S:
            self.flush()

    def snapshot(self) -> dict[str, dict]:
        """Statistics per layer and over all layers ("total"), as plain numbers."""
        if not self.layers:
            return {}
        total = sum(self.layers.values(), SpikeStats.zeros(next(iter(self.layers.values())).spike_events.device))
        return {name: stats.to_dict() for name, stats in self.layers.items()} | {"total": total.to_dict()}

    def flush(self) -> None:
        """Publish this worker's snapshot for the server's /metrics (atomic replace of one file)."""
        self.flushed_at = time.monotonic()
        directory = stats_dir()
        if not directory or not Path(directory).is_dir():
            return
        target = Path(directory) / f"worker-{os.getpid()}.json"
        partial = target.with_suffix(".tmp")
        partial.write_text(json.dumps(self.snapshot()))
        partial.replace(target)

    def reset(self) -> None:
        self.layers.clear()


RECORDER = SpikeRecorder()


def spike_stats_snapshot(_worker=None) -> dict[str, dict]:
    """For `LLM.collective_rpc`, which passes the worker: this worker's spike statistics."""
    return RECORDER.snapshot()


COUNTERS = {"spike_events": "spike events E = Σ popcount(|s|)", "synaptic_ops": "spike events × fan-out",
            "values": "spike-count values recorded"}
GAUGES = {"spikes_per_channel": "E / N", "silent_fraction": "share of s == 0",
          "sparsity": "1 - E / (N·T), T the encoder's time steps", "sparsity_t3": "3-step window sparsity"}


class SpikeStatsCollector:
    """Prometheus collector: every worker's published snapshot, labelled by worker file and layer."""

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        snapshots = {}
        directory = stats_dir()
        for file in sorted(Path(directory).glob("worker-*.json")) if directory else []:
            snapshots[file.stem] = json.loads(file.read_text())
        families = [CounterMetricFamily(f"neuronchip:{n}", d, labels=["worker", "layer"]) for n, d in COUNTERS.items()]
        families += [GaugeMetricFamily(f"neuronchip:{n}", d, labels=["worker", "layer"]) for n, d in GAUGES.items()]
        for worker, layers in snapshots.items():
            for layer, stats in layers.items():
                for family, key in zip(families, [*COUNTERS, *GAUGES]):
                    family.add_metric([worker, layer], stats[key])
        yield from families


_collector_registered = False


def publish_to_prometheus() -> None:
    """Register the collector once per process; the first vLLM process also creates the snapshot directory
    (unless NEURONCHIP_SPIKE_STATS_DIR names one), which engine and workers inherit through the environment."""
    global _collector_registered
    if _collector_registered:
        return
    if not stats_dir():
        directory = tempfile.mkdtemp(prefix="neuronchip-spike-stats-")
        os.environ[STATS_DIR_ENV] = directory
        atexit.register(shutil.rmtree, directory, ignore_errors=True)
    from prometheus_client import REGISTRY

    REGISTRY.register(SpikeStatsCollector())
    _collector_registered = True
