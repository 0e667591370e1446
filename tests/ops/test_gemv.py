"""The one-token GEMV (`ops.gemv`) against its fp64 reference: in the Triton interpreter here, on CUDA where there is
one (the 7B's decode shapes), and when it applies."""

import pytest
import torch

from tests.ops.test_gla import run_in_interpreter
from vllm_neuronchip.ops.gemv import Launch, gemv, gemv_applies, gemv_reference, share_of_error_bound

# (N, K): ragged edges in both dimensions, K shorter than one block, a single row.
BN, BK = Launch().block_n, Launch().block_k
SHAPES = [(BN * 5 + 3, BK * 2 + 17), (13, BK // 2 + 1), (1, BK * 3)]


def check_gemv(device: str, dtype: torch.dtype, N: int, K: int, bias: bool, strided: bool, launch: Launch = Launch()
               ) -> None:
    """gemv within its error bound of the exact result (`share_of_error_bound`), x given as [1, 1, K].
    `strided`: W is a view of every other row of a wider matrix (rows contiguous, row stride > K)."""
    generator = torch.Generator(device).manual_seed(N * K)
    wide = torch.randn(2 * N if strided else N, K + 64, generator=generator, device=device).to(dtype)
    weight = wide[::2, :K] if strided else wide[:, :K].contiguous()
    x = torch.randn(1, 1, K, generator=generator, device=device).to(dtype)
    b = torch.randn(N, generator=generator, device=device).to(dtype) if bias else None
    got, expected = gemv(x, weight, b, launch), gemv_reference(x, weight, b)
    assert got.shape == (1, 1, N) and got.dtype == dtype and expected.dtype == dtype
    share = share_of_error_bound(got, x, weight, b, launch)
    assert share <= 1, (dtype, N, K, bias, strided, share)


INTERPRETER_CHECK = """
import itertools, sys, torch
sys.path.insert(0, {tests!r})
import test_gemv as t
# Half types: the interpreter's casts truncate instead of rounding to nearest, within the bound's one unit.
for (N, K), dtype, bias, strided in itertools.product(t.SHAPES, [torch.float32, torch.bfloat16, torch.float16],
                                                      [False, True], [False, True]):
    t.check_gemv("cpu", dtype, N, K, bias, strided)
# Other launch settings (benchmarks/decode_gemv.py --sweep times them): rows and columns per program.
for launch in [t.Launch(block_n=4, block_k=128), t.Launch(block_n=16, block_k=512, num_warps=8, num_stages=2)]:
    t.check_gemv("cpu", torch.float32, 37, 700, True, True, launch=launch)
print("gemv ok")
"""


def test_gemv_in_interpreter():
    run_in_interpreter(INTERPRETER_CHECK, "gemv ok")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("N,K,bias", [(3584, 18944, False), (4624, 3584, True), (37888, 3584, False),
                                      *((n, k, True) for n, k in SHAPES)], ids=str)
def test_gemv_on_cuda(dtype, N, K, bias):
    check_gemv("cuda", dtype, N, K, bias, strided=False)


@pytest.mark.gpu
def test_gemv_applies_to_one_cuda_row_with_contiguous_weight_rows_and_bias():
    w = torch.zeros(64, 256, device="cuda", dtype=torch.bfloat16)
    x = torch.zeros(1, 256, device="cuda", dtype=torch.bfloat16)
    assert gemv_applies(x, w) and gemv_applies(x[None], w) and gemv_applies(x, w[::2])
    assert not gemv_applies(torch.zeros(2, 256, device="cuda", dtype=torch.bfloat16), w)  # two tokens
    assert not gemv_applies(x.float(), w)  # mixed dtypes
    assert not gemv_applies(x, torch.zeros(256, 64, device="cuda", dtype=torch.bfloat16).T)  # columns contiguous
    assert not gemv_applies(x.cpu(), w.cpu())
    bias = torch.zeros(128, device="cuda", dtype=torch.bfloat16)
    assert gemv_applies(x, w, bias[:64]) and not gemv_applies(x, w, bias[::2])  # a strided bias
