"""Int2Spike spike codecs (exact, functional) and cheap spike statistics of W8ASpike GEMM inputs.
See spec §8 (codecs), Decisions D8/D9 and §9.3 (statistics)."""

from vllm_neuronchip.ops.spike.codecs import (
    Encoding,
    SpikeTrain,
    encode_binary,
    encode_bitwise,
    encode_bitwise_bidirectional,
    encode_bitwise_twos_complement,
    encode_ternary,
    firing_rate,
    spike_dequant,
    spike_matmul,
    spike_quant,
    time_steps,
)
from vllm_neuronchip.ops.spike.stats import SpikeStats, spike_stats

__all__ = [
    "Encoding",
    "SpikeStats",
    "SpikeTrain",
    "encode_binary",
    "encode_bitwise",
    "encode_bitwise_bidirectional",
    "encode_bitwise_twos_complement",
    "encode_ternary",
    "firing_rate",
    "spike_dequant",
    "spike_matmul",
    "spike_quant",
    "spike_stats",
    "time_steps",
]
