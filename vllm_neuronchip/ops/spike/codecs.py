"""Int2Spike spike codecs as pure functions: integer tensors to spike trains [T, *x.shape] and back.

Same trains as BICLab/Int2Spike ``neuron.py`` (spec §8), without its stateful T or its dequant bug (D8).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import torch
from torch import Tensor

MAX_BITWISE_T = 62
"""Bit planes are taken from int64 values; 2^T must stay representable."""


class Encoding(enum.Enum):
    """The Int2Spike encoders. BITWISE_BIDIRECTIONAL (sign-magnitude, MSB first) is W8ASpike's."""

    BINARY = "binary"  # SpikeCountBinaryLIFNode: unary, x >= 0
    TERNARY = "ternary"  # SpikeCountTernaryLIFNode: signed unary, spikes -1/0/+1
    BITWISE = "bitwise"  # SpikeCountBitwiseNode(): unsigned bits, x >= 0
    BITWISE_BIDIRECTIONAL = "bitwise_bidirectional"  # (is_bidirectional=True): bits of |x| times sign(x)
    BITWISE_TWOS_COMPLEMENT = "bitwise_twos_complement"  # (is_bidirectional=True, is_two_complement=True)

    @property
    def bidirectional(self) -> bool:
        """Int2Spike's ``is_bidirectional``: the encoder takes signed input."""
        return self in (Encoding.TERNARY, Encoding.BITWISE_BIDIRECTIONAL, Encoding.BITWISE_TWOS_COMPLEMENT)

    @property
    def bitwise(self) -> bool:
        """Step t carries weight 2^(T-1-t) (MSB first); unary codes weigh every step 1."""
        return self in (Encoding.BITWISE, Encoding.BITWISE_BIDIRECTIONAL, Encoding.BITWISE_TWOS_COMPLEMENT)


@dataclass(frozen=True)
class SpikeTrain:
    """Result of :func:`spike_quant`.

    ``spikes`` is float32 ``[T, *x.shape]`` with values in {-1, 0, 1}; ``x_zero`` is int64 of x's shape and
    ``spike_dequant(spikes, encoding) == x + x_zero`` (exact while T is large enough for the values).
    """

    spikes: Tensor
    T: int
    x_zero: Tensor
    encoding: Encoding


def _as_int64(x: Tensor) -> Tensor:
    if x.is_floating_point() and not bool(torch.all(torch.isfinite(x) & (x == x.round()))):
        raise ValueError("x must be integer-valued (whole numbers, finite).")
    return x.to(torch.int64)


def time_steps(x: Tensor, encoding: Encoding) -> int:
    """Int2Spike's default T over the whole tensor x (the encoder's input).

    Binary: max(x); ternary: max|x|; bitwise: max(1, ceil(log2(m + 1))) with m = max(x) (unsigned) or
    max|x| (bidirectional); two's complement: max(2, ceil(log2(max|x| + 1)) + 1).
    """
    x = _as_int64(x)
    m = int((x.abs() if encoding.bidirectional else x).max())
    if not encoding.bitwise:
        return m
    bits = m.bit_length()  # == ceil(log2(m + 1)) for m >= 0, exactly
    if encoding is Encoding.BITWISE_TWOS_COMPLEMENT:
        return max(2, bits + 1)
    return max(1, bits)


def _prepare(x: Tensor, encoding: Encoding, T: int | None) -> tuple[Tensor, int]:
    """Validated int64 x and the T to encode it with."""
    x = _as_int64(x)
    if not encoding.bidirectional and bool((x < 0).any()):
        raise ValueError(f"{encoding.name} encoding needs x >= 0; spike_quant shifts x by x_zero instead.")
    if T is None:
        T = time_steps(x, encoding)
    if not isinstance(T, int) or T < 0 or (encoding.bitwise and not 1 <= T <= MAX_BITWISE_T):
        limits = f"1..{MAX_BITWISE_T}" if encoding.bitwise else ">= 0"
        raise ValueError(f"T for {encoding.name} must be an int in {limits}, got {T!r}.")
    return x, T


def _step_index(T: int, x: Tensor) -> Tensor:
    """t = 0..T-1 shaped [T, 1, ...] to broadcast against x."""
    return torch.arange(T, device=x.device).view(-1, *([1] * x.dim()))


def _bit_planes(v: Tensor, T: int) -> Tensor:
    """Bits of v >= 0, MSB first: plane t is bit T-1-t; higher bits are dropped (Int2Spike's overflow)."""
    return (v.unsqueeze(0) >> (T - 1 - _step_index(T, v))) & 1


def encode_binary(x: Tensor, T: int | None = None) -> Tensor:
    """Unary code of x >= 0: spike 1 at steps t < x, then 0 (values above T are cut to T)."""
    x, T = _prepare(x, Encoding.BINARY, T)
    return (x.unsqueeze(0) > _step_index(T, x)).to(torch.float32)


def encode_ternary(x: Tensor, T: int | None = None) -> Tensor:
    """Signed unary code: spike sign(x) at steps t < |x|, then 0."""
    x, T = _prepare(x, Encoding.TERNARY, T)
    return ((x.abs().unsqueeze(0) > _step_index(T, x)) * x.sign()).to(torch.float32)


def encode_bitwise(x: Tensor, T: int | None = None) -> Tensor:
    """Unsigned binary of x >= 0 over T steps, MSB first."""
    x, T = _prepare(x, Encoding.BITWISE, T)
    return _bit_planes(x, T).to(torch.float32)


def encode_bitwise_bidirectional(x: Tensor, T: int | None = None) -> Tensor:
    """Sign-magnitude: binary of |x| over T steps, MSB first, spikes -1 where x < 0 (W8ASpike's encoder)."""
    x, T = _prepare(x, Encoding.BITWISE_BIDIRECTIONAL, T)
    return (_bit_planes(x.abs(), T) * x.sign()).to(torch.float32)


def encode_bitwise_twos_complement(x: Tensor, T: int | None = None) -> Tensor:
    """T-bit two's complement of x (x & (2^T - 1)), MSB first; spikes are 0/1."""
    x, T = _prepare(x, Encoding.BITWISE_TWOS_COMPLEMENT, T)
    return _bit_planes(x & ((1 << T) - 1), T).to(torch.float32)


_ENCODERS = {
    Encoding.BINARY: encode_binary,
    Encoding.TERNARY: encode_ternary,
    Encoding.BITWISE: encode_bitwise,
    Encoding.BITWISE_BIDIRECTIONAL: encode_bitwise_bidirectional,
    Encoding.BITWISE_TWOS_COMPLEMENT: encode_bitwise_twos_complement,
}


def spike_quant(x: Tensor, encoding: Encoding | str, T: int | None = None) -> SpikeTrain:
    """Int2Spike ``spike_quant``: offset x where its encoder needs it, then encode.

    Offsets (accumulated in ``x_zero``, so that decoded == x + x_zero):
    bidirectional encoder and all x >= 0: h = ceil(x / 2), x -= h, x_zero -= h;
    unipolar encoder and any x < 0: x -= min(x), x_zero -= min(x);
    two's complement: x_zero += 2^T where the first (sign) step spikes.
    Encode without offsets by calling the ``encode_*`` function directly (unipolar ones reject x < 0).
    """
    encoding = Encoding(encoding)
    x = _as_int64(x)
    x_zero = torch.zeros_like(x)
    if encoding.bidirectional and bool((x >= 0).all()):
        half_up = (x + 1) // 2
        x = x - half_up
        x_zero = x_zero - half_up
    elif not encoding.bidirectional and bool((x < 0).any()):
        x_min = x.min()
        x = x - x_min
        x_zero = x_zero - x_min
    spikes = _ENCODERS[encoding](x, T)
    T = spikes.shape[0]
    if encoding is Encoding.BITWISE_TWOS_COMPLEMENT:
        x_zero = x_zero + (spikes[0] > 0) * (1 << T)
    return SpikeTrain(spikes=spikes, T=T, x_zero=x_zero, encoding=encoding)


def _combine_steps(y: Tensor, encoding: Encoding) -> Tensor:
    """Σ_t weight_t · y_t over dim 0, weight_t = 2^(T-1-t) for bitwise codes and 1 for unary codes."""
    if not encoding.bitwise:
        return y.sum(dim=0)
    T = y.shape[0]
    weights = (2 ** torch.arange(T - 1, -1, -1, device=y.device)).to(y.dtype)
    return (y * weights.view(-1, *([1] * (y.dim() - 1)))).sum(dim=0)


def spike_dequant(spikes: Tensor, encoding: Encoding | str) -> Tensor:
    """Decode a train [T, ...] to int64 values: Σ_t 2^(T-1-t) spike_t (bitwise) or Σ_t spike_t (unary).

    Two's complement decodes as unsigned, as in Int2Spike; ``x_zero`` from :func:`spike_quant` accounts for it.
    """
    return _combine_steps(spikes.to(torch.int64), Encoding(encoding))


def spike_matmul(x: Tensor, w: Tensor, encoding: Encoding | str, T: int | None = None) -> Tensor:
    """Σ_t weight_t (spikes_t @ w) in w's dtype; equals (x + spike_quant(x, encoding, T).x_zero) @ w."""
    encoding = Encoding(encoding)
    spikes = spike_quant(x, encoding, T).spikes
    return _combine_steps(spikes.to(w.dtype) @ w, encoding)


def firing_rate(spikes: Tensor) -> Tensor:
    """Int2Spike ``firing_rate``: Σ|spike| / numel over the whole [T, ...] train.

    Int2Spike sums raw spikes for unipolar codes; those are 0/1, so Σ|spike| is the same number.
    """
    return spikes.abs().sum() / spikes.numel()
