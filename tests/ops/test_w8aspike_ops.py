"""ops.w8aspike: the naive linear against quantization.spike_linear, the Triton kernels against the naive ones
(in the Triton interpreter here, on CUDA where there is one): exact .5 ties, both vth clamps, values beyond int8
(one and two higher base-128 digits on the dot path), codes beyond ±127 as ELL pieces, split-K at decode sizes,
the GEMV path (default for M <= 2, possible to 16) and the int8 dot path under their default plans and others."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import vllm_neuronchip
from vllm_neuronchip.ops.w8aspike import naive, triton_kernels, w8aspike_linear
from vllm_neuronchip.quantization.reference import GROUP_SIZE, spike_counts
from vllm_neuronchip.quantization.spike_linear import ExecutionPath, spike_linear
from vllm_neuronchip.quantization.weight_codes import WeightCodes

SHAPES = [(M, K, N) for M in (1, 3, 8) for K in (128, 256) for N in (16, 48)]  # (M, K, N)
K_VALUES = [3.0, 2.5]


def make_x(M, K, outliers=True):
    """Multiples of 1/16 (every fp32 sum of |x| exact in any order, so vth is bit-exact whatever the kernel's
    summation order), with two outlier channels (|s| > 127 in every row) unless `outliers` is False; "huge"
    adds a dominant channel 4e4 (|s| > 8192 for K >= 3584: three base-128 digits on the dot path)."""
    x = torch.randint(-48, 49, (M, K)) / 16
    if outliers:
        x[:, 3] = 150 + torch.randint(0, 64, (M,)) / 16
        x[:, K - 5] = -300
    if outliers == "huge":
        x[:, 7] = 4e4
    return x


def make_weight(N, K, overflow="1%"):
    """Exact codes round(50 z) with `overflow` "1%" (about 1% beyond ±127, plus two in the first and last group,
    one of them beyond ±254: several ELL pieces), "sparse" (round(10 z) and those two only: ELL width 1 or 2) or
    "none" (codes within ±127: no ELL); positive scales [N, K/128] and a bias."""
    exact = torch.round(torch.randn(N, K) * (10 if overflow == "sparse" else 50))
    if overflow != "none":
        exact[0, 1], exact[N - 1, K - 1] = 190, -600
    scales = (1 + torch.rand(N, K // GROUP_SIZE)) * 1e-3
    return WeightCodes.from_exact(exact.clamp(-127, 127) if overflow == "none" else exact), scales, torch.randn(N)


def tie_rows(K):
    """For K a power of two up to 2048: rows whose vth does not depend on the order of the sum of |x| and whose
    x / vth hit the rounding edge cases: exact .5 ties (plain, with |s| > 127, at the 1e4 clamp), the float just
    below 0.5, all zeros and tiny rows (vth clamped to 1e-5), x / vth beyond 2^23 (clamped to 1e4)."""
    assert K & (K - 1) == 0 and K <= 2048

    def row(magnitudes, unit):
        m = torch.arange(K) % 13
        m[: len(magnitudes)] = torch.tensor(magnitudes)
        target = 3
        while target < m.sum():
            target *= 2
        m[len(magnitudes)] += target - m.sum()  # sum|m| = 3·2^j, so vth = unit·2^j / K is a power of two
        return (m * random_signs(K))[torch.randperm(K)].float() * unit

    # x / vth = 0.49999997 (the largest float below 0.5), where floor(x / vth + 0.5) gives 1: its last bit is lost
    # in every partial sum it meets (all others are 0 or >= vth), so the sum is still order-independent.
    m = torch.arange(K) % 11
    m[m == 1] = 3
    m[1] += 6 * K - 1 - m.sum()  # sum|m| = 6K once the 1 - 2^-24 below is rounded into it: vth = 1/8
    below_half = torch.where(torch.arange(K) == 0, 1 - 2.0**-24, m.double()).float() * random_signs(K) / 16
    huge = (1 + torch.rand(K)) * 2.0**23 * 1e4 * random_signs(K)  # x / 1e4 is an integer >= 2^23, odd or even
    odd = 2 * torch.randint(0, 8, (K,)) + 1
    return torch.stack([
        row([], 1 / 16),  # x / vth = m / 2
        row([4000], 1 / 16),  # x / vth = m / 8, s up to 500
        below_half[torch.randperm(K)],
        torch.zeros(K),
        row([600], 2.0**-22),
        row([], 2.0**14),
        5000.0 * odd * random_signs(K),  # mean|x| > 3e4: x / 1e4 = ±(n + 0.5)
        huge,
    ])


def random_signs(n):
    return torch.where(torch.rand(n) < 0.5, -1, 1)


def assert_matches(actual, expected, rtol=1e-5):
    """fp32 and equal up to rtol of the largest magnitude (float rounding of the combine over groups)."""
    assert actual.dtype == torch.float32
    torch.testing.assert_close(actual, expected, rtol=0, atol=rtol * expected.abs().max().item())


def on(weight, device):
    return weight.apply(lambda t: t.to(device))


def check_quantize_exact(x, k, device="cpu"):
    """Bit for bit against spike_counts (x must have order-independent fp32 sums of |x|)."""
    s, vth = (t.cpu() for t in triton_kernels.spike_quantize(x.to(device), k))
    s_ref, vth_ref = spike_counts(x, k)
    assert s.dtype == torch.int32 and vth.dtype == torch.float32
    assert torch.equal(vth, vth_ref) and torch.equal(s, s_ref)


def check_quantize_random(x, k, device="cpu"):
    """Any x: vth as spike_counts' up to the summation order of |x|; s bit for bit round(x / vth) given vth."""
    s, vth = (t.cpu() for t in triton_kernels.spike_quantize(x.to(device), k))
    torch.testing.assert_close(vth, spike_counts(x, k)[1], rtol=1e-5, atol=0)
    assert torch.equal(s, torch.round(x.float() / vth).to(torch.int32))


def check_quantize(K, device="cpu"):
    torch.manual_seed(K)
    if K & (K - 1) == 0 and K <= 2048:
        ties = tie_rows(K)
        vth = spike_counts(ties)[1]
        assert torch.equal(vth[3:5], torch.full((2, 1), 1e-5)) and torch.equal(vth[5:], torch.full((3, 1), 1e4))
        y = ties / vth
        assert ((y - y.floor()) == 0.5).sum() > K  # many exact ties, to even both up and down
        assert (y.abs() == torch.nextafter(torch.tensor(0.5), torch.tensor(0.0))).sum() == 1
        for k in K_VALUES:
            check_quantize_exact(ties, k, device)
    for k in K_VALUES:
        check_quantize_exact(make_x(5, K), k, device)
        check_quantize_random(torch.randn(5, K) * torch.rand(5, 1) * 10, k, device)
        check_quantize_random((torch.randn(4, K) * 3).bfloat16(), k, device)


def check_matmul(M, K, N, with_bias, device="cpu", overflow="1%", outliers=True, plans=("default",)):
    """Against the naive GEMM, with the default plan and/or the variants of `plan_variants`; "all" runs both."""
    torch.manual_seed(M * 1000 + K + N)
    weight, scales, bias = make_weight(N, K, overflow)
    bias = bias if with_bias else None
    s, vth = spike_counts(make_x(M, K, outliers))
    assert (s.abs() > 127).any() == bool(outliers) and (weight.ell_cols.shape[1] > 0) == (overflow != "none")
    if outliers == "huge":
        assert (s.abs() > 8192).any()
    y_ref = naive.w8aspike_matmul(s, vth, weight, scales, bias)
    args = [t.to(device) if isinstance(t, torch.Tensor) else t for t in (s, vth, on(weight, device), scales, bias)]
    todo = [None] if plans == ("default",) else plan_variants(M, N, K // GROUP_SIZE, weight.ell_cols.shape[1])
    if plans == "all":
        todo = [None] + todo
    for plan in todo:
        y = triton_kernels.w8aspike_matmul(*args, plan=plan)
        assert_matches(y.cpu(), y_ref)


def plan_variants(M, N, G, W):
    """Non-default plans that stress the masks and splits: GEMV (if M <= 16) with whole-step and partial-step
    splits, a code tile wider than N, fp32 products, the next code tile prefetched with pipelined loads; the dot
    path with several M tiles and split-K, four stages, one tile without splits (also at M <= 16, which it
    handles as well), and the first ELL pieces dotted as a dense plane."""
    make = triton_kernels.make_plan
    plans = []
    if M <= triton_kernels.GEMV_MAX_M:
        plans += [
            make("gemv", M, N, G, W, 132, bn=32, gb=4, num_warps=8),  # one step over all groups, masked tail
            make("gemv", M, N, G, W, 132, bn=8, gb=2, programs_per_sm=100),  # splits of 2 groups, ELL split
            make("gemv", M, N, G, W, 132, bn=16, gb=1, fp32_products=True, programs_per_sm=100),
            make("gemv", M, N, G, W, 132, bn=16, gb=2, num_stages=3, prefetch=True, programs_per_sm=4),
        ]
    plans += [
        make("dot", M, N, G, W, 132, bm=16, bn=32, programs_per_sm=100),  # a split per group
        make("dot", M, N, G, W, 132, bm=16, bn=64, num_stages=4, programs_per_sm=2),
        make("dot", M, N, G, W, 132, bm=32, bn=64, num_warps=8, programs_per_sm=0.01),  # no split
        make("dot", M, N, G, W, 132, bm=16, bn=32, dense_ell=True, programs_per_sm=2),  # first pieces as a plane
    ]
    return plans


def check_linear(M, K, N, device="cpu"):
    """The Triton path end to end: quantizer then GEMM, against the naive linear."""
    torch.manual_seed(M + K + N)
    weight, scales, bias = make_weight(N, K)
    x = make_x(M, K)
    y_ref, s_ref = w8aspike_linear(x, 3.0, weight, scales, bias)  # CPU tensors: the naive path
    s, vth = triton_kernels.spike_quantize(x.to(device), 3.0)
    args = (s, vth, on(weight, device), scales.to(device), bias.to(device))
    y = triton_kernels.w8aspike_matmul(*args)
    assert torch.equal(s.cpu(), s_ref)
    assert_matches(y.cpu(), y_ref)
    y_bf16 = triton_kernels.w8aspike_matmul(*args, out_dtype=torch.bfloat16)
    if device == "cuda":  # rounded to nearest even once, from the same fp32 value
        assert torch.equal(y_bf16, y.bfloat16())
    else:  # the interpreter's bf16 cast truncates: within one bf16 unit of y
        torch.testing.assert_close(y_bf16.float(), y, rtol=2**-7, atol=0)


# CPU: the reference and the torch corrections.


@pytest.mark.parametrize("M,K,N", SHAPES)
@pytest.mark.parametrize("with_bias", [False, True])
def test_naive_matmul_is_integer_path(M, K, N, with_bias):
    torch.manual_seed(M + K + N)
    weight, scales, bias = make_weight(N, K)
    bias = bias if with_bias else None
    s, vth = naive.spike_quantize(make_x(M, K))
    y = naive.w8aspike_matmul(s, vth, weight, scales, bias)
    assert torch.equal(y, spike_linear(s, vth, weight, scales, bias, path=ExecutionPath.INTEGER))
    assert_matches(y, spike_linear(s, vth, weight, scales, bias, path=ExecutionPath.REFERENCE))


def test_ell_pieces_are_the_exact_codes():
    """Codes beyond ±127 become int8 pieces of at most ±127 at their column: first pieces first, then further
    pieces, each part padded with (0, 0)."""
    exact = torch.zeros(3, GROUP_SIZE, dtype=torch.int64)
    exact[:, :4] = torch.tensor([[0, 128, -127, 5], [-300, 127, 1000, 0], [1, 2, 3, 4]])
    weight = WeightCodes.from_exact(exact)
    assert weight.codes.dtype == torch.int8 and weight.ell_cols.dtype == torch.int16
    assert weight.ell_residual.dtype == torch.int8
    assert torch.equal(weight.codes.int(), exact.clamp(-127, 127).int())
    # row 0: 128 = 127 + 1; row 1: -300 = -127 - 127 - 46 and 1000 = 127 + 127 + 5 · 127 + 111:
    # first pieces (1 and 2 of them) in W1 = 2 slots, then further pieces (0 and 1 + 6) in 7
    assert weight.ell_cols.shape == (3, 9) and weight.first_width == 2
    assert weight.ell_residual[0].tolist() == [1] + [0] * 8 and weight.ell_cols[0].tolist() == [1] + [0] * 8
    assert weight.ell_residual[1].tolist() == [-127, 127, -46] + [127] * 5 + [111]
    assert weight.ell_cols[1].tolist() == [0, 2, 0] + [2] * 6
    assert not weight.ell_residual[2].any()
    assert torch.equal(weight.exact(), exact.int())


@pytest.mark.parametrize("overflow", ["none", "sparse", "1%"])
def test_accumulate_with_ell_is_exact(overflow):
    torch.manual_seed(9)
    M, K, N = 5, 384, 24
    weight, _, _ = make_weight(N, K, overflow)
    s = spike_counts(make_x(M, K))[0]
    exact = weight.exact()
    expected = (s.long()[:, None, :] * exact.long()[None]).view(M, N, K // GROUP_SIZE, GROUP_SIZE).sum(-1)
    assert torch.equal(weight.accumulate(s).long(), expected)


def test_ell_costs_a_few_percent_of_the_int8_bytes():
    """Codes round(N(0, 49.3)) as in the real checkpoint (~1% beyond ±127): ELL at 3 bytes a padded entry."""
    torch.manual_seed(0)
    weight = WeightCodes.from_exact(torch.round(torch.randn(1024, 3584) * 49.3))
    overflow = (weight.ell_residual != 0).float().mean(1).mean() * weight.ell_cols.shape[1] / 3584
    assert 0.008 < overflow < 0.012
    ell_bytes = weight.ell_cols.nbytes + weight.ell_residual.nbytes
    assert ell_bytes < 0.06 * weight.codes.nbytes


@pytest.mark.parametrize("N,K", [(4608, 3584), (3584, 3584), (512, 3584), (37888, 3584), (3584, 18944)])
@pytest.mark.parametrize("M", [1, 8, 16, 17, 256, 4096])
def test_gemm_plan_fills_an_h100(M, N, K):
    G = K // GROUP_SIZE
    plan = triton_kernels.gemm_plan(M, N, G, 57, sm_count=132)
    assert plan == triton_kernels.gemm_plan(M, N, G, 57, sm_count=132)  # plain arithmetic
    assert plan.kind == ("gemv" if M <= triton_kernels.GEMV_DEFAULT_MAX_M else "dot")
    assert plan.programs(M, N) >= (2 if M <= 16 else 1) * 132 or plan.splits * plan.gb >= G
    assert plan.groups_per_split % plan.gb == 0 or plan.splits == 1
    assert plan.groups_per_split * (plan.splits - 1) < G <= plan.groups_per_split * plan.splits  # no empty split
    assert plan.ell_per_split * plan.splits >= 57
    if plan.kind == "gemv":
        assert plan.bm >= M and plan.bn * plan.gb * 128 // (32 * plan.num_warps) <= 128  # codes a thread
    assert plan.dense_ell == (M > 64)  # prefill: the first ELL pieces as a dense plane
    candidates = triton_kernels.candidate_plans(M, N, G, 57, sm_count=132)
    assert candidates[0] == plan and len(set(candidates)) == len(candidates) <= 160
    dense = triton_kernels.candidate_plans(M, N, G, 57, sm_count=132, kinds=("dense",))
    assert dense[0] == plan and len(dense) > 1 and all(p.dense_ell for p in dense[1:])


def test_residual_dot_exactness_bound():
    triton_kernels.check_exact_fp32_residual(3.0, 18944)  # the 7B's widest input, default k
    with pytest.raises(ValueError, match="2\\^24"):
        triton_kernels.check_exact_fp32_residual(8.0, 18944)


def test_linear_dispatch_on_cpu_is_naive():
    torch.manual_seed(10)
    weight, scales, bias = make_weight(32, 256)
    x = make_x(6, 256).view(2, 3, 256).bfloat16()
    y, s = w8aspike_linear(x, 2.5, weight, scales, bias)
    s_ref, vth = naive.spike_quantize(x.reshape(6, 256), 2.5)
    assert y.shape == (2, 3, 32) and s.shape == (2, 3, 256)
    assert torch.equal(s.view(6, 256), s_ref)
    assert torch.equal(y.view(6, 32), naive.w8aspike_matmul(s_ref, vth, weight, scales, bias))


def _env(**extra):
    root = Path(vllm_neuronchip.__file__).parents[1]
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]), **extra}


def test_imports_without_triton():
    check = "import sys; sys.modules['triton'] = None; import vllm_neuronchip.ops.w8aspike; print('imported')"
    run = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=120, env=_env(),
                         check=False)
    assert run.returncode == 0 and "imported" in run.stdout, run.stdout + run.stderr


# Triton kernels in the interpreter (CPU tensors, numpy semantics: int8 dots with int32 sums, IEEE division).

# Triton reads TRITON_INTERPRET when it is first imported, hence a fresh process.
INTERPRETER_CHECK = """
import sys
sys.path.insert(0, {tests!r})
import test_w8aspike_ops as t
for K in (128, 256, 3584):  # 3584: two steps of the quantizer's loops, the second one masked
    t.check_quantize(K)
for M, K, N in t.SHAPES:
    for with_bias in (False, True):
        t.check_matmul(M, K, N, with_bias)
t.check_matmul(70, 384, 80, True)  # several tiles along M and N, masked edges, three groups
for M in (1, 5, 16, 17, 64):  # default GEMV at 1, dot from 5 (GEMV variants to 16); plans split K (S = 3 for K 384)
    for overflow in ("none", "sparse", "1%"):  # no ELL; ELL narrower than the splits; ~1% with pieces
        for outliers in (False, True):
            t.check_matmul(M, 384, 40, overflow != "sparse", overflow=overflow, outliers=outliers,
                           plans="all" if overflow != "sparse" else ("default",))
    t.check_matmul(M, 128, 40, False)  # one group: no split, vth and bias in the GEMM
for M in (1, 17):  # |s| > 8192: the dot path's third digit; the GEMV's plain int32 products
    t.check_matmul(M, 3584, 24, True, outliers="huge", plans="all")
t.check_linear(8, 256, 48)
t.check_linear(20, 3584, 128)  # the model's hidden size: 28 groups
assert not t.triton_kernels._split_counters(t.torch.device("cpu")).any(), "split-K counts left set"
print("triton w8aspike ok")
"""


def test_triton_kernels_in_interpreter():
    pytest.importorskip("triton", reason="triton is not installed")
    run = subprocess.run(
        [sys.executable, "-c", INTERPRETER_CHECK.format(tests=str(Path(__file__).parent))],
        env=_env(TRITON_INTERPRET="1"), capture_output=True, text=True, timeout=300, check=False,
    )
    assert run.returncode == 0 and "triton w8aspike ok" in run.stdout, run.stdout + run.stderr


# The same comparisons on a GPU (compiled kernels: int8 MMA, libdevice-free rounding, div.rn).


@pytest.mark.gpu
@pytest.mark.parametrize("K", [128, 256, 2048, 3584, 18944])
def test_spike_quantize_on_cuda(K):
    check_quantize(K, "cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("M,K,N", SHAPES + [(70, 384, 80), (1, 3584, 4608), (37, 3584, 512), (300, 18944, 256)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_w8aspike_matmul_on_cuda(M, K, N, with_bias):
    check_matmul(M, K, N, with_bias, "cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("M", [1, 5, 16, 17, 64])
@pytest.mark.parametrize("overflow", ["none", "sparse", "1%"])
@pytest.mark.parametrize("outliers", [False, True, "huge"])
@pytest.mark.parametrize("K,N", [(128, 40), (384, 40), (3584, 512), (3584, 4608), (18944, 3584)])
def test_w8aspike_matmul_split_k_and_ell_on_cuda(M, K, N, overflow, outliers):
    if outliers == "huge" and K < 3584:
        pytest.skip("|s| > 8192 needs K >= 3584 at k = 3")
    check_matmul(M, K, N, M % 2 == 1, "cuda", overflow=overflow, outliers=outliers, plans="all")


@pytest.mark.gpu
@pytest.mark.parametrize("M", [1, 16, 17, 256])
@pytest.mark.parametrize("N,K", [(4608, 3584), (512, 3584)])
def test_every_candidate_plan_on_cuda(M, N, K):
    """Every plan the benchmark's sweep may pick is exact (the sweep itself checks the timed ones too)."""
    torch.manual_seed(M + N)
    weight, scales, bias = make_weight(N, K)
    s, vth = spike_counts(make_x(M, K, "huge"))
    y_ref = naive.w8aspike_matmul(s, vth, weight, scales, bias)
    args = (s.cuda(), vth.cuda(), on(weight, "cuda"), scales.cuda(), bias.cuda())
    for plan in triton_kernels.candidate_plans(M, N, K // GROUP_SIZE, weight.ell_cols.shape[1]):
        assert_matches(triton_kernels.w8aspike_matmul(*args, plan=plan).cpu(), y_ref)


@pytest.mark.gpu
@pytest.mark.parametrize("M,K,N", [(1, 3584, 4608), (2, 18944, 3584), (16, 3584, 512), (300, 3584, 4608)])
def test_gemm_replayed_in_a_cuda_graph(M, K, N):
    """The default GEMM captured once and replayed on new spike counts, as vLLM replays batches of up to 512 tokens:
    each replay matches the naive GEMM. At decode sizes a split-K plan (the last split of every tile ran the sum and
    left its count at 0 for the next); at M = 300 a dense-plane plan (plane and σᵀ made inside the graph)."""
    weight, scales, bias = make_weight(N, K)
    plan = triton_kernels.gemm_plan(M, N, K // GROUP_SIZE, weight.ell_cols.shape[1])
    assert plan.splits > 1 or plan.dense_ell
    s, vth = (t.cuda() for t in spike_counts(make_x(M, K)))
    args = (on(weight, "cuda"), scales.cuda(), bias.cuda())
    triton_kernels.w8aspike_matmul(s, vth, *args)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = triton_kernels.w8aspike_matmul(s, vth, *args)
    for seed in range(3):
        torch.manual_seed(seed)
        new_s, new_vth = spike_counts(make_x(M, K))
        s.copy_(new_s)
        vth.copy_(new_vth)
        graph.replay()
        assert_matches(y.cpu(), naive.w8aspike_matmul(new_s, new_vth, weight, scales, bias))
    assert not triton_kernels._split_counters(s.device).any()


@pytest.mark.gpu
@pytest.mark.parametrize("M,K,N", [(1, 3584, 512), (64, 3584, 18944)])
def test_w8aspike_linear_on_cuda(M, K, N):
    check_linear(M, K, N, "cuda")
    weight, scales, bias = make_weight(N, K)
    x = make_x(M, K).cuda()
    y, s = w8aspike_linear(x, 3.0, on(weight, "cuda"), scales.cuda(), bias.cuda())  # dispatch picks Triton
    y_ref, s_ref = w8aspike_linear(x.cpu(), 3.0, weight, scales, bias)
    assert y.is_cuda and torch.equal(s.cpu(), s_ref)
    assert_matches(y.cpu(), y_ref)
