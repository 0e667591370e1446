"""W8ASpike weight codes at run time: int8 where they fit, the ~1% beyond ±127 kept exactly aside.

The overflow is a padded per-row (ELL) list of (column, int8 piece) pairs, built once at load: what the
GPU GEMM reads inside its tiles. `accumulate` gives the exact per-group integer sums `Σ_{i∈g} s_i c_i`
with int32 accumulation (the CPU reference and the spike emulator).
"""

from dataclasses import dataclass

import torch

from vllm_neuronchip.quantization.reference import GROUP_SIZE

INT8_LIMIT = 127
INT16_COLUMNS = 2**15
"""Input widths up to this keep ELL column indices in int16."""


@dataclass
class WeightCodes:
    """Exact codes c [out, in] = `codes` + the ELL pieces of each row: c[n, ell_cols[n, w]] += ell_residual[n, w].

    A code beyond ±127 is its clamp plus ceil(|c - clamp| / 127) pieces of at most ±127 at its column, so every
    piece fits int8 (3 bytes an entry with int16 columns). Slots [0, first_width) of a row hold the first piece of
    each of its overflowing codes (by column, at most one per column: with the clamp they cover |c| <= 254), slots
    [first_width, W) the further pieces of codes beyond ±254; each part is padded to its widest row with
    (column 0, piece 0), which adds nothing. For the real checkpoint (~1% of codes beyond ±127, all within ±254)
    W is about 1.5x the mean count: ~5% of the int8 bytes at K = 3584 in the worst-padded layer. One row with many
    more outliers than the others widens every row of its layer; there is no cap."""

    codes: torch.Tensor  # int8 [out, in], clamped to ±127
    ell_cols: torch.Tensor  # int16 (int32 for in > 2^15) [out, W]
    ell_residual: torch.Tensor  # int8 [out, W], 0 in the padding
    first_width: int  # slots holding first pieces (the rest hold further pieces)

    @classmethod
    def from_exact(cls, exact: torch.Tensor) -> "WeightCodes":
        """From exact integer codes [out, in] (any int dtype), on their device."""
        exact = exact.to(torch.int32)
        out, in_features = exact.shape
        clamped = exact.clamp(-INT8_LIMIT, INT8_LIMIT)
        rows, cols = (exact != clamped).nonzero(as_tuple=True)  # row-major: each row's entries are contiguous
        residual = (exact - clamped)[rows, cols]
        pieces = (residual.abs() + INT8_LIMIT - 1) // INT8_LIMIT
        total = int(pieces.sum())
        if total > out * in_features:
            raise ValueError(f"weight codes up to {int(exact.abs().max())} need {total} int8 overflow pieces for "
                             f"{out * in_features} codes: expected codes mostly within ±127 (wrong scales?)")
        first_entry = (torch.cumsum(pieces, 0) - pieces).repeat_interleave(pieces)
        rows, cols, residual, pieces = [t.repeat_interleave(pieces) for t in (rows, cols, residual, pieces)]
        piece_index = torch.arange(total, device=exact.device) - first_entry  # 0 .. pieces - 1 within one code
        sign = residual.sign()
        last = piece_index == pieces - 1
        value = torch.where(last, residual - sign * INT8_LIMIT * (pieces - 1), sign * INT8_LIMIT)
        # Entries grouped by (row, first piece or further one), stably: each group keeps its column order.
        part = rows * 2 + (piece_index > 0)
        order = torch.sort(part, stable=True).indices
        rows, cols, value, part = rows[order], cols[order], value[order], part[order]
        counts = torch.bincount(part, minlength=2 * out)  # per (row, part)
        first_width, later_width = (int(w) for w in counts.view(out, 2).max(0).values) if total else (0, 0)
        rank = torch.arange(total, device=exact.device) - (torch.cumsum(counts, 0) - counts)[part]
        slot = rank + (part % 2) * first_width
        index_dtype = torch.int16 if in_features <= INT16_COLUMNS else torch.int32
        ell_cols = torch.zeros(out, first_width + later_width, dtype=index_dtype, device=exact.device)
        ell_residual = torch.zeros(out, first_width + later_width, dtype=torch.int8, device=exact.device)
        ell_cols[rows, slot] = cols.to(index_dtype)
        ell_residual[rows, slot] = value.to(torch.int8)
        return cls(clamped.to(torch.int8), ell_cols, ell_residual, first_width)

    def apply(self, fn) -> "WeightCodes":
        """The same codes with `fn` applied to each tensor (e.g. `.to(device)`, `torch.clone`)."""
        return WeightCodes(fn(self.codes), fn(self.ell_cols), fn(self.ell_residual), self.first_width)

    @property
    def shape(self) -> torch.Size:
        return self.codes.shape

    def overflow_entries(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The nonzero ELL pieces as COO (rows int64, cols int64, residual int32); a code may appear twice."""
        rows, slots = self.ell_residual.nonzero(as_tuple=True)
        return rows, self.ell_cols[rows, slots].long(), self.ell_residual[rows, slots].to(torch.int32)

    def exact(self) -> torch.Tensor:
        """The exact codes as int32 [out, in]."""
        rows, cols, residual = self.overflow_entries()
        return self.codes.to(torch.int32).index_put_((rows, cols), residual, accumulate=True)

    def accumulate(self, spike_counts: torch.Tensor) -> torch.Tensor:
        """acc[r, o, g] = Σ_{i in group g} s[r, i] · c[o, i], int32, exact while each group sum fits int32
        (|s| · |c| · 128 < 2^31: |s| up to ~1e5 with codes near ±190)."""
        rows, in_features = spike_counts.shape
        out, groups = self.codes.shape[0], in_features // GROUP_SIZE
        s = spike_counts.to(torch.int32).view(rows, groups, GROUP_SIZE).transpose(0, 1)
        c = self.codes.to(torch.int32).view(out, groups, GROUP_SIZE).permute(1, 2, 0)
        acc = (s @ c).permute(1, 2, 0).contiguous()  # [rows, out, groups]
        overflow_rows, cols, residual = self.overflow_entries()
        if overflow_rows.numel():
            correction = spike_counts[:, cols].to(torch.int32) * residual
            slots = overflow_rows * groups + cols // GROUP_SIZE
            acc.view(rows, out * groups).index_add_(1, slots, correction)
        return acc
