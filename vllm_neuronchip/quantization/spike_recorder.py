"""Per-layer spike statistics of W8ASpike GEMM inputs, accumulated on the device while serving.

The worker's W8ASpike linears record into `RECORDER`; read it in-process with `RECORDER.snapshot()`
or from any engine with `llm.collective_rpc(spike_stats_snapshot)`. Definitions: `ops/spike/stats.py`.
"""

import torch

from vllm_neuronchip.ops.spike.stats import SpikeStats, spike_stats


class SpikeRecorder:
    def __init__(self) -> None:
        self.layers: dict[str, SpikeStats] = {}

    def record(self, layer: str, spike_counts: torch.Tensor, fan_out: int) -> None:
        if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
            return  # a captured graph would replay the add into stale buffers: statistics skip graph replays
        stats = spike_stats(spike_counts, fan_out)
        self.layers[layer] = self.layers[layer] + stats if layer in self.layers else stats

    def snapshot(self) -> dict[str, dict]:
        """Statistics per layer and over all layers ("total"), as plain numbers."""
        if not self.layers:
            return {}
        total = sum(self.layers.values(), SpikeStats.zeros(next(iter(self.layers.values())).spike_events.device))
        return {name: stats.to_dict() for name, stats in self.layers.items()} | {"total": total.to_dict()}

    def reset(self) -> None:
        self.layers.clear()


RECORDER = SpikeRecorder()


def spike_stats_snapshot(_worker=None) -> dict[str, dict]:
    """For `LLM.collective_rpc`, which passes the worker: this worker's spike statistics."""
    return RECORDER.snapshot()
