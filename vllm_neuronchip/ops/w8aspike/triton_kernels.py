"""GPU path of a W8ASpike linear: a Triton spike quantizer and Triton int8 GEMMs with one scale per 128-wide K group.
Spike counts past ±127 and codes past ±127 (padded per-row ELL pieces) are both handled exactly inside the GEMMs.

Two GEMM paths, picked by `gemm_plan` from the shapes alone (no autotuning, no host sync, CUDA-graph safe):

* "gemv" (batch-1 decode; the default up to `GEMV_DEFAULT_MAX_M` rows, possible up to 16): no tensor cores. A
  program owns BN output rows and a range of K groups; each step loads a [BN, GB, 128] tile of int8 codes (GB groups
  at once, K-contiguous; with `prefetch` the next step's tile is requested before this one is used; with
  num_stages > 1 Triton pipelines the small loads of s and σ through shared memory), and for every row m of s (a
  statically unrolled loop over the M rows, padded to a power of two) multiplies the int32 spike counts by the
  codes, sums each 128-group exactly (int32, or fp32 where every partial sum is an integer below 2^24) and applies
  σ per group in fp32. Counts beyond ±127 need nothing special:
  s·c is a plain integer product.
* "dot" (any M, the default beyond `GEMV_DEFAULT_MAX_M`): int8 tensor-core dots. A small prep kernel turns s into
  int8 digits s = d0 + 128·d1 + 16384·d2 (d0 = s where |s| <= 127, else the low balanced base-128 digit) and
  per-group flags (the most digits any row needs in that group, atomic max: order-free). The GEMM loop does one
  int8 dot of d0 per group; a second pass adds the dots of d1 and d2 only in flagged groups (a uniform branch on
  one loaded scalar, no reduction), each combined exactly in int32 before σ.

With `dense_ell` (dot plans beyond 64 rows by default, where the ELL gathers dominate), a small kernel first expands
the first ELL pieces (`WeightCodes.first_width` slots) into a zeroed int8 plane [N, K] (per call, freed after it),
which the group loop dots like the codes (|c8 + piece| <= 254 keeps d0·(c8 + piece) exact in int32); only the
further pieces of codes beyond ±254 (none in the real checkpoint) stay in the gather loop, which then reads s
from the digits, so sᵀ is not written.

Both: with few output tiles the groups are split S ways (split-K) so the grid fills the GPU; each split also
takes 1/S of the ELL columns and stores an fp32 partial [S, M, N]. The split that finishes a tile last (an atomic
count per tile) sums that tile's partials in split order (deterministic, whatever order the splits finished in),
applies vth and the bias and writes y in the caller's dtype (bf16 for the model): one launch per GEMM, no reduce
or cast kernel."""

import functools
from dataclasses import dataclass, replace

import torch

from vllm_neuronchip.quantization.reference import (
    DEFAULT_K,
    GROUP_SIZE,
    VTH_MAX,
    VTH_MIN,
)
from vllm_neuronchip.ops.w8aspike import tuned_plans
from vllm_neuronchip.quantization.weight_codes import INT8_LIMIT, WeightCodes

QUANTIZE_BLOCK = 2048
"""Features per step of the quantizer's loops over a row."""

QUANTIZE_CHUNK = 512
"""Features a quantizer program writes when M is below the SM count (each program sums its whole row for vth,
then writes one chunk), so that a decode row is spread over K / 512 programs instead of one."""

GEMV_MAX_M = 16
"""Rows of s the tensor-core-free GEMV path can take (its loop over rows is unrolled)."""

GEMV_DEFAULT_MAX_M = 2
"""Rows of s up to which `gemm_plan` picks the GEMV. H100, qkv_proj, quantizer + GEMM
(benchmarks/results/gpu/h100/w8aspike/): at M = 16 the int8-dot plan BM 16, BN 128, 2 programs per SM took 22.5 us
against 65.1 us for the GEMV; at M = 1 the GEMV took 14.3 us against 21.7 us for that dot plan. The GEMV grows by
about 3.4 us a row, so they cross near M = 3 (interpolated: M = 2 to 15 were not timed)."""

GEMV_TILES = ((32, 1), (16, 1), (8, 1))
"""(BN, GB) the default GEMV plan tries in order: 32 output rows x 128 codes (4096 int8, 32 a thread at 4 warps)
per step where N allows, then narrower tiles so that small N still fills the GPU. Picked by the H200 sweep
(benchmarks/results/gpu/h200/w8aspike_sweep_qkv_proj.json): on qkv_proj BN 32 GB 1 at 4 programs per SM was
best at M = 16 (68.9 us against 111.3 for the former BN 16 GB 4 at 2 per SM) and near-best at M = 1 (17.2 us
against 19.1; best 15.5)."""
GEMV_PROGRAMS_PER_SM = 4.0

PREP_ROWS = 32
"""Rows of s per program of the dot path's prep kernel (one 128-group per program)."""

EXPAND_ROWS, EXPAND_SLOTS = 16, 64
"""Rows per program, and ELL slots per step, of the kernel that expands first pieces into a dense plane."""

ROW_DEPENDENT = ("M", "groups_per_split", "ell_start", "ell_per_split", "splits")
"""Kernel arguments that change with the number of rows (and `ell_start`, with the layer's ELL split): not
specialised (Triton would otherwise compile again for a row count equal to 1 or divisible by 16, e.g. in the middle
of serving, for the first prompt of an odd length)."""

DIGIT_LIMIT = 2**21
"""|s| below which the three int8 base-128 digits of the dot path are exact (|d2| <= 127)."""


def spike_quantize(x: torch.Tensor, k: float = DEFAULT_K) -> tuple[torch.Tensor, torch.Tensor]:
    """`naive.spike_quantize` for x [M, K] (any float dtype) -> (s int32 [M, K], vth fp32 [M, 1]). Same fp32
    operations; the sum of |x| may be ordered differently, so vth can differ from torch's in the last bits where
    that sum rounds. Every program of a row sums it in the same order: one vth per row."""
    import triton

    if not k > 0:
        raise ValueError(f"k must be positive, got {k}")
    if x.stride(-1) != 1:
        x = x.contiguous()
    M, K = x.shape
    s = torch.empty(M, K, dtype=torch.int32, device=x.device)
    vth = torch.empty(M, 1, dtype=torch.float32, device=x.device)
    chunk = K if M >= _sm_count(x.device) else min(K, QUANTIZE_CHUNK)
    _quantize_kernel()[(M, triton.cdiv(K, chunk))](
        x, x.stride(0), s, vth, float(k),
        K=K, CHUNK=chunk, SUM_BLOCK=min(triton.next_power_of_2(K), QUANTIZE_BLOCK),
        BLOCK=min(triton.next_power_of_2(chunk), QUANTIZE_BLOCK), VTH_MIN=VTH_MIN, VTH_MAX=VTH_MAX,
    )
    return s, vth


@dataclass(frozen=True)
class GemmPlan:
    """One launch configuration of `w8aspike_matmul`. Everything here is fixed by (M bucket, N, K, W) and the SM
    count, so a plan never depends on data and the launch is CUDA-graph safe."""

    kind: str  # "gemv" (M <= 16, CUDA cores) or "dot" (int8 tensor cores, any M)
    bm: int  # rows of s per program (gemv: M rounded up to a power of two, all rows in one program)
    bn: int  # output features per program
    gb: int  # 128-groups per step of the K loop (dot: 1)
    splits: int  # S: programs along K for one output tile
    groups_per_split: int  # 128-groups per split, a multiple of gb (the last split may have fewer)
    ell_per_split: int  # ELL columns per split
    ell_block: int  # gemv: ELL columns per step of a program's ELL loop (the dot path takes one at a time)
    num_warps: int = 4
    num_stages: int = 2
    fp32_products: bool = False  # gemv: products and group sums in fp32 (exact under check_exact_fp32_residual)
    programs_per_sm: float = 2.0  # the grid `make_plan` aimed at when it chose `splits`
    prefetch: bool = False  # gemv: load the next step's code tile before this step's arithmetic
    dense_ell: bool = False  # dot: first ELL pieces expanded into an int8 [N, K] plane dotted like the codes

    def programs(self, M: int, N: int) -> int:
        """Programs of the GEMM's grid for s [M, K] and N outputs."""
        return -(-M // self.bm) * -(-N // self.bn) * self.splits


def make_plan(kind: str, M: int, N: int, G: int, W: int, sm_count: int, *, bn: int, bm: int = 0, gb: int = 1,
              num_warps: int = 4, num_stages: int = 2, fp32_products: bool = False,
              programs_per_sm: float = 2.0, ell_block: int = 0, prefetch: bool = False,
              dense_ell: bool = False) -> GemmPlan:
    """A plan with the given tiles whose split-K S is the smallest that gives at least `programs_per_sm` · SMs
    programs (as far as G allows): S = ceil(G / groups_per_split) with groups_per_split a multiple of gb.
    `ell_block` 0: the GEMV's default ELL step, 16 or 8 slots (1 for the dot path, which takes one at a time)."""
    if kind == "gemv":
        bm = _next_power_of_2(M)
    elif kind != "dot":
        raise ValueError(f"unknown GEMM kind {kind!r}")
    else:
        gb, ell_block = 1, 1
    tiles = -(-M // bm) * -(-N // bn)
    wanted = -(-int(programs_per_sm * sm_count) // tiles)
    steps = -(-G // gb)
    steps_per_split = steps if wanted <= 1 else max(1, steps // wanted)
    groups_per_split = min(steps_per_split * gb, G) if steps_per_split < steps else G
    splits = -(-G // groups_per_split)
    if not ell_block:
        ell_block = 16 if bn <= 32 else 8
    return GemmPlan(kind, bm, bn, gb, splits, groups_per_split, -(-W // splits) if W else 0, ell_block,
                    num_warps, num_stages, fp32_products, programs_per_sm, prefetch, dense_ell and kind == "dot")


def gemm_plan(M: int, N: int, G: int, W: int, sm_count: int | None = None) -> GemmPlan:
    """The default plan: deterministic arithmetic on the shapes (no autotuning at run time, no host sync).

    M <= `GEMV_DEFAULT_MAX_M`, the GEMV path: the first (BN, GB) of `GEMV_TILES` whose tiles x steps reach
    2 · SMs programs, then split-K to `GEMV_PROGRAMS_PER_SM` · SMs programs; 4 warps, int32 products, no
    prefetch or pipelining.
    Beyond, the int8 tensor-core path, BN 128 (64 for N <= 1024), 3 stages: M <= 16, BM 16, 4 warps, split-K to
    two programs per SM (the H100 sweep's best at M = 16); M <= 64, BM 64, 8 warps, split-K to one program per SM.
    Beyond 64 rows, the first ELL pieces as a dense plane (the H100 sweep's best at M = 4096 on qkv_proj and
    gate_up_proj: 715 and 5142 us against 2031 and 15858 us with the ELL gathers), BM 128, BN 32, 4 warps: the
    best such tile that does not spill registers (BN 128 at 8 warps, the sweep's best, spills with Triton 3.9)."""
    sm_count = DEFAULT_SM_COUNT if sm_count is None else sm_count
    rows = plan_range(M)
    if rows == 0:
        for bn, gb in GEMV_TILES:
            if -(-N // bn) * -(-G // gb) >= 2 * sm_count:
                break
        return make_plan("gemv", M, N, G, W, sm_count, bn=bn, gb=gb, num_warps=4, num_stages=1,
                         programs_per_sm=GEMV_PROGRAMS_PER_SM)
    bn = 64 if N <= 1024 else 128
    if rows == 1:
        return make_plan("dot", M, N, G, W, sm_count, bm=16, bn=bn, num_warps=4, num_stages=3, programs_per_sm=2.0)
    if rows == 2:
        return make_plan("dot", M, N, G, W, sm_count, bm=64, bn=bn, num_warps=8 if bn == 128 else 4, num_stages=3,
                         programs_per_sm=1.0)
    return make_plan("dot", M, N, G, W, sm_count, bm=128, bn=32, num_warps=4, num_stages=3, programs_per_sm=1.0,
                     dense_ell=True)


def device_plan(M: int, N: int, G: int, W: int, device: torch.device) -> GemmPlan:
    """The plan `w8aspike_matmul` uses by default: from the tuned table for this GPU and shape (`tuned_plans`), the
    entry of the largest swept M' <= M in the same `plan_range` as M; else `gemm_plan`."""
    swept = tuned_plans.tuned_settings(N, G * GROUP_SIZE, device)
    usable = [m for m in swept if m <= M and plan_range(m) == plan_range(M)]
    if not usable:
        return gemm_plan(M, N, G, W, _sm_count(device))
    return make_plan(M=M, N=N, G=G, W=W, sm_count=_sm_count(device), **swept[max(usable)])


def plan_range(M: int) -> int:
    """Which of `gemm_plan`'s ranges of M this is: 0 GEMV, 1 dot with BM 16, 2 dot with BM 64, 3 dot with BM 128."""
    return 0 if M <= GEMV_DEFAULT_MAX_M else 1 if M <= GEMV_MAX_M else 2 if M <= 64 else 3


def candidate_plans(M: int, N: int, G: int, W: int, sm_count: int | None = None,
                    kinds=("gemv", "dot")) -> list[GemmPlan]:
    """The plans `benchmarks/w8aspike_gemm.py --sweep` times for one (M, N, K, W), the default first; all exact.
    GEMV plans only for M <= `GEMV_MAX_M` and if in `kinds`; dot plans (any M: rows are masked) if in `kinds`,
    with the ELL gathers and with the dense first-piece plane, or only the latter for "dense"."""
    sm_count = DEFAULT_SM_COUNT if sm_count is None else sm_count
    plans = [gemm_plan(M, N, G, W, sm_count)]
    if M <= GEMV_MAX_M and "gemv" in kinds:
        for bn in (16, 32, 64, 128):
            for gb in (1, 2, 4):
                for num_warps in (4, 8):
                    if not 16 <= bn * gb * 128 // (32 * num_warps) <= 64:  # int8 codes a thread per step
                        continue
                    for pps, prefetch in ((2.0, False), (4.0, False), (4.0, True)):
                        plans.append(make_plan("gemv", M, N, G, W, sm_count, bn=bn, gb=gb, num_warps=num_warps,
                                               num_stages=1, programs_per_sm=pps, prefetch=prefetch))
        base = plans[0]
        plans += [replace(base, fp32_products=True), replace(base, num_stages=2), replace(base, num_stages=3)]
    for bm in ((16, 32, 64) if M <= 64 else (64, 128)) if {"dot", "dense"} & set(kinds) else ():
        for bn in (32, 64, 128, 256):
            if bm * bn > 128 * 256:
                continue
            for num_warps, num_stages in ((4, 3), (4, 4), (8, 3), (8, 4)):
                if bm * bn < 8192 and num_warps == 8:
                    continue
                for pps in (1.0, 2.0):
                    plan = make_plan("dot", M, N, G, W, sm_count, bm=bm, bn=bn, num_warps=num_warps,
                                     num_stages=num_stages, programs_per_sm=pps)
                    plans += [plan] if "dot" in kinds else []
                    if W and num_stages == 3:
                        plans.append(replace(plan, dense_ell=True))
    unique = {}  # without repeats, in order: plans that differ only in the grid they aimed at are the same launch
    for plan in plans:
        unique.setdefault(replace(plan, programs_per_sm=0.0), plan)
    return list(unique.values())


def _next_power_of_2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def w8aspike_matmul(
    s: torch.Tensor,
    vth: torch.Tensor,
    weight: WeightCodes,
    scales: torch.Tensor,
    bias: torch.Tensor | None = None,
    plan: GemmPlan | None = None,
    out_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """`naive.w8aspike_matmul` -> y [M, N] in `out_dtype` (rounded once from fp32), with no host synchronisation
    and shapes fixed by M, N, K and the ELL width (CUDA-graph safe). `plan` overrides `gemm_plan` (the sweep).

    Both paths compute, per 128-group g, the exact integer acc_g = Σ_{i∈g} s_i · c8_i (c8 the int8 codes) and
    add σ[n, g] · acc_g in fp32; the ELL pieces r (|r| <= 127) at columns j add σ[n, j // 128] · (s_j · r),
    s_j · r an exact integer; y = vth · out + b. The group sums are below 127 · Σ|s_i| < 2^24 under
    `check_exact_fp32_residual`, so their conversion to fp32 is exact too: only the multiplications by σ and
    the sums over groups, ELL pieces and splits round, like the fp64 combine of the reference."""
    import triton

    M, K = s.shape
    N, G = weight.codes.shape[0], K // GROUP_SIZE
    if K % GROUP_SIZE or weight.codes.shape[1] != K or scales.shape[:2] != (N, G):
        raise ValueError(f"s {tuple(s.shape)}, codes {tuple(weight.codes.shape)} and scales "
                         f"{tuple(scales.shape)} do not fit groups of {GROUP_SIZE}")
    if weight.ell_cols.shape != weight.ell_residual.shape or weight.ell_cols.shape[0] != N:
        raise ValueError(f"ELL columns {tuple(weight.ell_cols.shape)} and pieces "
                         f"{tuple(weight.ell_residual.shape)} must both be [{N}, W]")
    W = weight.ell_cols.shape[1]
    if plan is None:
        plan = device_plan(M, N, G, W, s.device)
    elif plan.kind == "gemv" and plan.bm < M:
        raise ValueError(f"a GEMV plan for {plan.bm} rows cannot take M = {M}")
    tiles = -(-M // plan.bm) * -(-N // plan.bn)
    if plan.splits > 1 and tiles > SPLIT_COUNTERS:
        raise ValueError(f"a split-K plan with {tiles} output tiles exceeds the {SPLIT_COUNTERS} tile counters")
    y = torch.empty(M, N, dtype=out_dtype, device=s.device)
    partials = y if plan.splits == 1 else torch.empty(plan.splits, M, N, dtype=torch.float32, device=s.device)
    counters = _split_counters(s.device)
    s, vth = s.contiguous(), vth.contiguous()
    codes, sigma = weight.codes.contiguous(), scales.reshape(N, G).contiguous()
    ell_cols, ell_residual = weight.ell_cols.contiguous(), weight.ell_residual.contiguous()
    bias_or_y = bias.contiguous() if bias is not None else y  # any valid pointer when there is no bias
    common = {"K": K, "G": G, "HAS_BIAS": bias is not None, "HAS_ELL": W > 0, "SPLIT": plan.splits > 1,
              "BM": plan.bm, "BN": plan.bn, "num_warps": plan.num_warps, "num_stages": plan.num_stages}
    if plan.kind == "gemv":
        _gemv_kernel()[(triton.cdiv(N, plan.bn), plan.splits)](
            s, codes, sigma, vth, bias_or_y, ell_cols, ell_residual, y, partials, counters,
            M, N, W, plan.groups_per_split, plan.ell_per_split, plan.splits,
            GB=plan.gb, WB=plan.ell_block, FP32=plan.fp32_products, STAGES=plan.num_stages, PREFETCH=plan.prefetch,
            **common,
        )
    else:
        dense = plan.dense_ell and W > 0
        ell_start = weight.first_width if dense else 0  # the slots the gather loop takes: [ell_start, W)
        digits = torch.empty(3, M, K, dtype=torch.int8, device=s.device)
        ld_st = -(-M // 16) * 16  # sᵀ rows padded to 16 columns: aligned gathers whatever M is
        s_t = torch.empty(K, ld_st, dtype=torch.int32, device=s.device) if W and not dense else digits
        flags = torch.zeros(G, dtype=torch.int32, device=s.device)
        _prep_kernel()[(triton.cdiv(M, PREP_ROWS), G)](s, digits, s_t, flags, M, M * K, ld_st, K=K, PM=PREP_ROWS,
                                                       WRITE_T=W > 0 and not dense)
        plane = torch.zeros(N, K, dtype=torch.int8, device=s.device) if dense else codes
        if dense:  # σᵀ [G, N] for the dense plans (the transpose is well under 1% of a GEMM of over 64 rows)
            sigma = sigma.t().contiguous()
            _first_pieces_kernel()[(triton.cdiv(N, EXPAND_ROWS),)](
                ell_cols, ell_residual, plane, N, W, weight.first_width, K=K, RB=EXPAND_ROWS, WB=EXPAND_SLOTS)
        _dot_kernel()[(triton.cdiv(M, plan.bm), triton.cdiv(N, plan.bn), plan.splits)](
            digits, s_t, flags, codes, plane, sigma, vth, bias_or_y, ell_cols, ell_residual, y, partials, counters,
            M, M * K, ld_st, N, W, ell_start, plan.groups_per_split, -(-(W - ell_start) // plan.splits), plan.splits,
            DENSE_ELL=dense, **common,
        )
    return y


SPLIT_COUNTERS = 16384
"""Output tiles a split-K GEMM may have: the size of the per-device count buffer (the default plans split only
below 4 programs per SM, at most a few hundred tiles)."""


@functools.cache
def _split_counters(device: torch.device) -> torch.Tensor:
    """The split-K arrival counts, one int32 per output tile, zero between GEMMs (the last split of a tile sets
    its count back to 0). Shared by every GEMM on the device, so GEMMs must not run concurrently on two streams
    (the model's forward is one stream); allocated on the first GEMM, which in vLLM is the warm-up before any
    CUDA graph is captured."""
    return torch.zeros(SPLIT_COUNTERS, dtype=torch.int32, device=device)

DEFAULT_SM_COUNT = 132
"""SMs assumed off CUDA (the interpreter): an H100 SXM."""


@functools.cache
def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return DEFAULT_SM_COUNT
    return torch.cuda.get_device_properties(device).multi_processor_count


def check_exact_fp32_residual(k: float, in_features: int) -> None:
    """Σ_i |s_i| over a row is at most k·K + K/2 (s = round(x / vth), vth = mean|x| / k, unless vth is clamped),
    so any partial sum of products s_i · c_i with |c_i| <= 127 (a group sum of int8 codes, the product of a
    spike count and an ELL piece) is below 127 · (k·K + K/2). Below 2^24 these integers are exact in fp32: the
    GEMV's fp32 products and sums, and the conversion of every exact int32 group sum to fp32 before σ. It also
    bounds |s| below 2^24 / 127 < `DIGIT_LIMIT`, where the dot path's three int8 digits of s are exact, and
    keeps every int32 sum far below 2^31."""
    bound = INT8_LIMIT * (k * in_features + in_features / 2)
    if bound >= 2**24:
        raise ValueError(f"k={k} with {in_features} input features could exceed fp32's exact integers "
                         f"in the residual dot ({bound:.3g} >= 2^24)")


@functools.cache
def _quantize_kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def spike_quantize_kernel(
        x, stride_x, s, vth, k, K: tl.constexpr, CHUNK: tl.constexpr, SUM_BLOCK: tl.constexpr,
        BLOCK: tl.constexpr, VTH_MIN: tl.constexpr, VTH_MAX: tl.constexpr,
    ):
        # Program (row, chunk): vth from the whole row (the same sum in every chunk's program), then s for its chunk.
        row, chunk = tl.program_id(0).to(tl.int64), tl.program_id(1)
        x_row, s_row = x + row * stride_x, s + row * K
        total = tl.zeros([SUM_BLOCK], dtype=tl.float32)
        for start in range(0, K, SUM_BLOCK):
            cols = start + tl.arange(0, SUM_BLOCK)
            total += tl.abs(tl.load(x_row + cols, mask=cols < K, other=0.0).to(tl.float32))
        # Correctly rounded divisions (a plain fp32 `/` may lower to an approximate one on GPU).
        mean = tl.math.div_rn(tl.sum(total, axis=0), K * 1.0)
        v = tl.minimum(tl.maximum(tl.math.div_rn(mean, k), VTH_MIN), VTH_MAX)
        if chunk == 0:
            tl.store(vth + row, v)
        end = tl.minimum(chunk * CHUNK + CHUNK, K)
        for start in range(chunk * CHUNK, end, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            y = tl.math.div_rn(tl.load(x_row + cols, mask=cols < end, other=0.0).to(tl.float32), v)
            # Round half to even (the interpreter has no libdevice rint): floor(y + 0.5), and where y + 0.5
            # is an integer (a tie, or y just below 0.5 rounded up to 1) an odd result steps down by one.
            t = y + 0.5
            r = tl.floor(t)
            r = tl.where((t == r) & ((r.to(tl.int32) & 1) != 0), r - 1.0, r)
            r = tl.where(tl.abs(y) < 8388608.0, r, y)  # |y| >= 2^23 is already an integer
            tl.store(s_row + cols, r.to(tl.int32), mask=cols < end)

    return spike_quantize_kernel


store_tile = ell_slots = write_y = codes_dot = dot_scales = None
"""Triton functions of the GEMMs (the epilogue and write of y of both, the GEMV's ELL slot loads, the dot path's
int8 dot of the codes and its loads of σ) that
`_define_helpers` puts here (triton is imported lazily; the kernels reach them as module globals, which both
Triton's compiler and its interpreter resolve)."""


@functools.cache
def _define_helpers() -> None:
    global store_tile, ell_slots, write_y, codes_dot, dot_scales
    import triton
    import triton.language as tl

    @triton.jit
    def load_ell_slots(ell_cols, ell_residual, scales, cols, m_cols, w0, w_end, W, G: tl.constexpr,
                       WB: tl.constexpr):
        # ELL slots w0 .. w0 + WB (below w_end) of the BN output rows `cols`: columns j, pieces r (int32, 0 in the
        # padding and masked slots) and the scales σ[n, j // 128], each [BN, WB], and the mask of live slots.
        p_ell = cols.to(tl.int64)[:, None] * W  # [BN, 1]
        ws = w0 + tl.arange(0, WB)
        m_ell = m_cols[:, None] & (ws < w_end)[None, :]  # [BN, WB]
        j = tl.load(ell_cols + p_ell + ws[None, :], mask=m_ell, other=0).to(tl.int32)
        r = tl.load(ell_residual + p_ell + ws[None, :], mask=m_ell, other=0).to(tl.int32)
        sigma = tl.load(scales + cols[:, None] * G + j // 128, mask=m_ell, other=0.0)
        return j, r, sigma, m_ell

    @triton.jit
    def write_y(out_tile, y, vth, bias, rows, cols, M, N, HAS_BIAS: tl.constexpr):
        # y = vth · tile + b, rounded once to y's dtype.
        m_rows, m_cols = rows < M, cols < N
        out_tile = tl.load(vth + rows, mask=m_rows, other=0.0)[:, None] * out_tile
        if HAS_BIAS:
            out_tile += tl.load(bias + cols, mask=m_cols, other=0.0).to(tl.float32)[None, :]
        tl.store(y + rows.to(tl.int64)[:, None] * N + cols[None, :], out_tile.to(y.dtype.element_ty),
                 mask=m_rows[:, None] & m_cols[None, :])

    @triton.jit
    def epilogue(out_tile, y, partials, counters, vth, bias, rows, cols, tile, split, splits, M, N,
                 SPLIT: tl.constexpr, HAS_BIAS: tl.constexpr):
        # One split: y from the tile. Split-K: store this split's fp32 partial [S, M, N]; count the tile's arrivals
        # (the barrier orders every thread's stores before the release of the atomic); the last split to arrive
        # sums the S partials in split order (bypassing L1), writes y and sets the count back to 0.
        if SPLIT:
            mask = (rows < M)[:, None] & (cols < N)[None, :]
            offsets = rows.to(tl.int64)[:, None] * N + cols[None, :]
            tl.store(partials + split.to(tl.int64) * M * N + offsets, out_tile, mask=mask)
            tl.debug_barrier()
            arrived = tl.atomic_add(counters + tile, 1, sem="acq_rel", scope="gpu")
            if arrived == splits - 1:
                total = tl.zeros_like(out_tile)
                p_part = partials + offsets
                for _ in range(splits):
                    total += tl.load(p_part, mask=mask, other=0.0, cache_modifier=".cg")
                    p_part += M * N
                write_y(total, y, vth, bias, rows, cols, M, N, HAS_BIAS)
                tl.atomic_xchg(counters + tile, 0, sem="relaxed", scope="gpu")
        else:
            write_y(out_tile, y, vth, bias, rows, cols, M, N, HAS_BIAS)

    @triton.jit
    def codes_dot(a, b, p_plane, m_cols, DENSE_ELL: tl.constexpr):
        # a [BM, 128] int8 digits times the group's codes b [128, BN], plus (DENSE_ELL) its first-piece plane:
        # |c8 + piece| <= 254, so the sum stays exact in the one int32 accumulator.
        acc = tl.dot(a, b, out_dtype=tl.int32)
        if DENSE_ELL:
            acc = tl.dot(a, tl.load(p_plane, mask=m_cols[None, :], other=0), acc, out_dtype=tl.int32)
        return acc

    @triton.jit
    def load_dot_scales(scales, cols, g, m_cols, N, G: tl.constexpr, TRANSPOSED: tl.constexpr):
        # σ[cols, g] (g a scalar or one group per column) from σ [N, G], or from σᵀ [G, N] when TRANSPOSED: then a
        # group's scales are contiguous, which kept the dense-plane 128 x 128 tile from spilling (Triton 3.6).
        if TRANSPOSED:
            return tl.load(scales + g * N + cols, mask=m_cols, other=0.0)
        return tl.load(scales + cols * G + g, mask=m_cols, other=0.0)

    store_tile, ell_slots, dot_scales = epilogue, load_ell_slots, load_dot_scales


@functools.cache
def _gemv_kernel():
    import triton
    import triton.language as tl

    _define_helpers()

    @triton.jit(do_not_specialize=ROW_DEPENDENT)
    def w8aspike_gemv_kernel(
        s, codes, scales, vth, bias, ell_cols, ell_residual, y, partials, counters,
        M, N, W, groups_per_split, ell_per_split, splits,
        K: tl.constexpr, G: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_ELL: tl.constexpr, SPLIT: tl.constexpr,
        FP32: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, GB: tl.constexpr, WB: tl.constexpr,
        STAGES: tl.constexpr, PREFETCH: tl.constexpr,
    ):
        # One program per BN output rows and split of K, all M (<= BM) rows of s. Each step: a [BN, GB, 128] int8
        # code tile (GB whole groups, K-contiguous), reused by every row m of s; the products are exact integers
        # (|s · c| sums < 2^24 under check_exact_fp32_residual, so also in fp32 when FP32), summed per group over
        # the last axis, then scaled by σ [BN, GB] in fp32.
        split = tl.program_id(1)
        cols = tl.program_id(0) * BN + tl.arange(0, BN)
        m_cols = cols < N
        gi = tl.arange(0, GB)
        ks = tl.arange(0, 128)
        rows = tl.arange(0, BM)
        p_codes = codes + cols.to(tl.int64)[:, None, None] * K + (gi[:, None] * 128 + ks[None, :])[None, :, :]
        p_sigma = scales + cols[:, None] * G + gi[None, :]  # [BN, GB]
        p_s = gi[:, None] * 128 + ks[None, :]  # [GB, 128] offsets within a row of s
        out_tile = tl.zeros([BM, BN], dtype=tl.float32)
        g_start = split * groups_per_split
        g_end = tl.minimum(g_start + groups_per_split, G)
        if PREFETCH:  # the next step's code tile is loaded before this step's arithmetic: two tiles in flight
            c_next = tl.load(p_codes + g_start * 128,
                             mask=m_cols[:, None, None] & ((g_start + gi) < g_end)[None, :, None], other=0)
        for g0 in tl.range(g_start, g_end, GB, num_stages=STAGES):
            m_g = (g0 + gi) < g_end
            if PREFETCH:
                c = c_next
                c_next = tl.load(p_codes + (g0 + GB) * 128,
                                 mask=m_cols[:, None, None] & ((g0 + GB + gi) < g_end)[None, :, None], other=0)
            else:
                c = tl.load(p_codes + g0 * 128, mask=m_cols[:, None, None] & m_g[None, :, None], other=0)
            sigma = tl.load(p_sigma + g0, mask=m_cols[:, None] & m_g[None, :], other=0.0)
            if FP32:
                c = c.to(tl.float32)
            else:
                c = c.to(tl.int32)
            for m in tl.static_range(BM):
                a = tl.load(s + m * K + g0 * 128 + p_s, mask=(m_g & (gi * 0 + m < M))[:, None], other=0)  # [GB, 128] int32
                if FP32:
                    a = a.to(tl.float32)
                part = tl.sum(a[None, :, :] * c, axis=2)  # [BN, GB] exact group sums
                contrib = tl.sum(part.to(tl.float32) * sigma, axis=1)  # [BN]
                out_tile = tl.where(rows[:, None] == m, out_tile + contrib[None, :], out_tile)
        if HAS_ELL:
            # Codes beyond ±127: pieces r (|r| <= 127) at columns j of each output row n; s[m, j] · r is an exact
            # integer (int32), then times σ[n, j // 128] in fp32. Padding is (column 0, piece 0).
            w_start = split * ell_per_split
            w_end = tl.minimum(w_start + ell_per_split, W)
            for w0 in range(w_start, w_end, WB):
                j, r, sigma, m_ell = ell_slots(ell_cols, ell_residual, scales, cols, m_cols, w0, w_end, W, G, WB)
                for m in tl.static_range(BM):
                    spikes = tl.load(s + m * K + j, mask=m_ell & (j * 0 + m < M), other=0)  # [BN, WB] int32
                    contrib = tl.sum((spikes * r).to(tl.float32) * sigma, axis=1)
                    out_tile = tl.where(rows[:, None] == m, out_tile + contrib[None, :], out_tile)
        store_tile(out_tile, y, partials, counters, vth, bias, rows, cols, tl.program_id(0), split, splits, M, N,
                   SPLIT, HAS_BIAS)

    return w8aspike_gemv_kernel


@functools.cache
def _prep_kernel():
    import triton
    import triton.language as tl

    @triton.jit(do_not_specialize=ROW_DEPENDENT)
    def spike_digits_kernel(s, digits, s_t, flags, M, digit_plane, ld_st, K: tl.constexpr, PM: tl.constexpr,
                            WRITE_T: tl.constexpr):
        # One program per PM rows and 128-group g of s: int8 digits [3, M, K] with s = d0 + 128·d1 + 16384·d2,
        # d0 = s where |s| <= 127 (then d1 = d2 = 0), else the low balanced base-128 digit of s (in [-64, 63]);
        # flags[g] = max over rows of the digits needed (0: s fits int8, 1: d1, 2: d2), by atomic max (order-free:
        # deterministic). s_t = sᵀ [K, ld_st >= M] for the ELL gathers of the dot path (columns of s contiguous).
        g = tl.program_id(1)
        rows = tl.program_id(0) * PM + tl.arange(0, PM)
        ks = g * 128 + tl.arange(0, 128)
        m_rows = rows < M
        a = tl.load(s + rows.to(tl.int64)[:, None] * K + ks[None, :], mask=m_rows[:, None], other=0)
        big = tl.abs(a) > 127
        digit0 = tl.where(big, ((a + 64) & 127) - 64, a)
        t = (a - digit0) >> 7  # exact: a - digit0 is a multiple of 128
        digit1 = ((t + 64) & 127) - 64
        digit2 = (t - digit1) >> 7
        level = tl.where(big, tl.where(digit2 != 0, 2, 1), 0)
        p_digits = digits + rows.to(tl.int64)[:, None] * K + ks[None, :]
        p_d1 = p_digits + digit_plane.to(tl.int64)  # digit_plane = M · K: d1 after d0, d2 after d1
        tl.store(p_digits, digit0.to(tl.int8), mask=m_rows[:, None])
        tl.store(p_d1, digit1.to(tl.int8), mask=m_rows[:, None])
        tl.store(p_d1 + digit_plane.to(tl.int64), digit2.to(tl.int8), mask=m_rows[:, None])
        if WRITE_T:
            tl.store(s_t + ks.to(tl.int64)[None, :] * ld_st + rows[:, None], a, mask=m_rows[:, None])
        tl.atomic_max(flags + g, tl.max(tl.max(level, axis=1), axis=0))

    return spike_digits_kernel


@functools.cache
def _first_pieces_kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def ell_first_pieces_kernel(ell_cols, ell_residual, plane, N, W, first_width, K: tl.constexpr, RB: tl.constexpr,
                                WB: tl.constexpr):
        # plane [N, K] (zeroed) gets the first pieces, slots [0, first_width) of each row (at most one a column);
        # padding pieces are 0 and not stored (they would race with a real piece at column 0).
        rows = tl.program_id(0) * RB + tl.arange(0, RB)
        p_ell = rows.to(tl.int64)[:, None] * W
        for w0 in range(0, first_width, WB):
            ws = w0 + tl.arange(0, WB)
            live = (rows < N)[:, None] & (ws < first_width)[None, :]
            j = tl.load(ell_cols + p_ell + ws[None, :], mask=live, other=0).to(tl.int32)
            r = tl.load(ell_residual + p_ell + ws[None, :], mask=live, other=0)
            tl.store(plane + rows.to(tl.int64)[:, None] * K + j, r, mask=live & (r != 0))

    return ell_first_pieces_kernel


@functools.cache
def _dot_kernel():
    import triton
    import triton.language as tl

    _define_helpers()

    @triton.jit(do_not_specialize=ROW_DEPENDENT)
    def w8aspike_dot_kernel(
        digits, s_t, flags, codes, plane, scales, vth, bias, ell_cols, ell_residual, y, partials, counters,
        M, digit_plane, ld_st, N, W, ell_start, groups_per_split, ell_per_split, splits,
        K: tl.constexpr, G: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_ELL: tl.constexpr, SPLIT: tl.constexpr,
        BM: tl.constexpr, BN: tl.constexpr, DENSE_ELL: tl.constexpr,
    ):
        # One program per [BM, BN] tile of y and split of K; one int8 dot [BM, 128] x [128, BN] of the low digits
        # d0 per group (and of the first-piece plane with DENSE_ELL), in a loop without branches (its loads
        # pipeline; a branch there had made the 128 x 128 tile spill registers in every step). A second pass over
        # the split's groups adds, where the prep kernel flagged the group (some |s| > 127 in it, any row),
        # σ · (128·(d1·c) + 16384·(d2·c)): each dot is exact in int32 and the sum below 2^24, so a flagged group's
        # σ-scaled sum is rounded twice instead of once. The branch is on one loaded scalar: uniform.
        split = tl.program_id(2)
        rows = tl.program_id(0) * BM + tl.arange(0, BM)
        cols = tl.program_id(1) * BN + tl.arange(0, BN)
        ks = tl.arange(0, 128)
        m_rows, m_cols = rows < M, cols < N
        row_offsets = rows.to(tl.int64)[:, None] * K + ks[None, :]  # [BM, 128]
        p_codes = codes + cols.to(tl.int64)[None, :] * K + ks[:, None]  # [128, BN], K-major
        out_tile = tl.zeros([BM, BN], dtype=tl.float32)
        g_start = split * groups_per_split
        g_end = tl.minimum(g_start + groups_per_split, G)
        p_plane = plane + cols.to(tl.int64)[None, :] * K + ks[:, None]  # the first ELL pieces, as the codes
        for g in range(g_start, g_end):  # branch-free, so that its loads pipeline and nothing spills
            a = tl.load(digits + row_offsets + g * 128, mask=m_rows[:, None], other=0)
            b = tl.load(p_codes + g * 128, mask=m_cols[None, :], other=0)
            acc = codes_dot(a, b, p_plane + g * 128, m_cols, DENSE_ELL)
            sigma = dot_scales(scales, cols, g, m_cols, N, G, DENSE_ELL)
            out_tile += acc.to(tl.float32) * sigma[None, :]
        for g in range(g_start, g_end):  # the higher digits, only in the groups the prep kernel flagged
            level = tl.load(flags + g)
            if level > 0:
                b = tl.load(p_codes + g * 128, mask=m_cols[None, :], other=0)
                a = tl.load(digits + digit_plane.to(tl.int64) + row_offsets + g * 128, mask=m_rows[:, None],
                            other=0)
                acc = codes_dot(a, b, p_plane + g * 128, m_cols, DENSE_ELL) * 128
                if level > 1:
                    a = tl.load(digits + 2 * digit_plane.to(tl.int64) + row_offsets + g * 128,
                                mask=m_rows[:, None], other=0)
                    acc += codes_dot(a, b, p_plane + g * 128, m_cols, DENSE_ELL) * 16384
                sigma = dot_scales(scales, cols, g, m_cols, N, G, DENSE_ELL)
                out_tile += acc.to(tl.float32) * sigma[None, :]
        if HAS_ELL:
            # ELL slots [ell_start, W) (all of them, or with DENSE_ELL the further pieces beyond the plane's), one
            # column slot at a time for the BN output rows: s[rows, j] times r (exact int32) times σ[n, j // 128].
            # Gathers from sᵀ (contiguous over rows) accumulate as [BN, BM] (several slots per step as
            # [BN, WB, BM] was 25% slower at M = 4096 on the H100 with WB = 1); with DENSE_ELL, rare slots, s comes
            # from the three digit planes straight into the [BM, BN] tile (an extra [BN, BM] tile made the
            # 128 x 128 tile spill in its group loop).
            ell_tile = tl.zeros([BN, BM], dtype=tl.float32)
            p_ell = cols.to(tl.int64) * W
            w_start = ell_start + split * ell_per_split
            for w in range(w_start, tl.minimum(w_start + ell_per_split, W)):
                j = tl.load(ell_cols + p_ell + w, mask=m_cols, other=0).to(tl.int32)
                r = tl.load(ell_residual + p_ell + w, mask=m_cols, other=0).to(tl.int32)
                sigma = dot_scales(scales, cols, j // 128, m_cols, N, G, DENSE_ELL)
                if DENSE_ELL:
                    m_tile = m_rows[:, None] & m_cols[None, :]
                    p_s = digits + rows.to(tl.int64)[:, None] * K + j[None, :]  # [BM, BN]
                    spikes = tl.load(p_s, mask=m_tile, other=0).to(tl.int32)
                    spikes += tl.load(p_s + digit_plane.to(tl.int64), mask=m_tile, other=0).to(tl.int32) * 128
                    spikes += tl.load(p_s + 2 * digit_plane.to(tl.int64), mask=m_tile, other=0).to(tl.int32) * 16384
                    out_tile += (spikes * r[None, :]).to(tl.float32) * sigma[None, :]
                else:
                    spikes = tl.load(s_t + j.to(tl.int64)[:, None] * ld_st + rows[None, :],
                                     mask=m_cols[:, None] & m_rows[None, :], other=0)  # [BN, BM]
                    ell_tile += (spikes * r[:, None]).to(tl.float32) * sigma[:, None]
            if not DENSE_ELL:
                out_tile += tl.trans(ell_tile)
        tile = tl.program_id(0) * tl.num_programs(1) + tl.program_id(1)
        store_tile(out_tile, y, partials, counters, vth, bias, rows, cols, tile, split, splits, M, N, SPLIT,
                   HAS_BIAS)

    return w8aspike_dot_kernel
