"""Every Triton kernel of the GPU paths compiles for an H100 (sm_90) here, without a GPU.

The GPU entry points run on CPU tensors with launches recorded instead of run; each recorded launch is then
compiled to a cubin by Triton's own compiler, specialised as a launch would be (tensors and integers divisible by
16 marked so, which is what lets Triton pipeline the dot loops with cp.async; integers equal to 1 become
constants). This catches what the interpreter (TRITON_INTERPRET=1) cannot: code that Triton cannot lower for the
GPU, and register spills in the GEMMs' hot loops (read from the cubin's SASS). Results are checked elsewhere
(interpreter and GPU tests).
"""

import inspect
import re
import subprocess
import tempfile
from pathlib import Path

import pytest
import torch

triton = pytest.importorskip("triton")

from triton.backends.compiler import BaseBackend, GPUTarget
from triton.compiler import ASTSource
from triton.runtime.jit import KernelInterface, create_function_from_signature

from tests.ops.test_w8aspike_ops import make_weight
from vllm_neuronchip.ops import gemv
from vllm_neuronchip.ops.gla import fla, triton_chunk
from vllm_neuronchip.ops.spike import triton_stats
from vllm_neuronchip.ops.w8aspike import triton_kernels

H100 = GPUTarget("cuda", 90, 32)
POINTER_TYPES = {torch.float64: "*fp64", torch.float32: "*fp32", torch.bfloat16: "*bf16", torch.int32: "*i32",
                 torch.int16: "*i16", torch.int8: "*i8", torch.int64: "*i64", torch.bool: "*i1"}
LAUNCH_OPTIONS = ("num_warps", "num_stages")


def recorded_launches(monkeypatch, run) -> list[tuple]:
    """(kernel, args, kwargs) of every `kernel[grid](...)` that `run()` makes, none of them executed."""
    launches = []
    monkeypatch.setattr(KernelInterface, "__getitem__",
                        lambda kernel, grid: lambda *args, **kwargs: launches.append((kernel, args, kwargs)))
    run()
    monkeypatch.undo()
    assert launches, "nothing was launched"
    return launches


def argument_type(value) -> str:
    if isinstance(value, torch.Tensor):
        return POINTER_TYPES[value.dtype]
    if isinstance(value, bool):
        return "i1"
    if isinstance(value, int):
        return "i32" if -(2**31) <= value < 2**31 else "i64"
    if isinstance(value, float):
        return "fp32"
    raise TypeError(f"no Triton type for {value!r}")


def compile_for_h100(kernel, args, kwargs):
    parameters = inspect.signature(kernel.fn).parameters
    values = dict(zip(parameters, args)) | {k: v for k, v in kwargs.items() if k not in LAUNCH_OPTIONS}
    signature, constexprs, aligned = {}, {}, {}
    for index, (name, parameter) in enumerate(parameters.items()):
        value = values[name]
        unspecialised = name in kernel.do_not_specialize or index in kernel.do_not_specialize
        if "constexpr" in str(parameter.annotation) or (type(value) is int and value == 1 and not unspecialised):
            signature[name], constexprs[name] = "constexpr", value
            continue
        signature[name] = argument_type(value)
        if ((isinstance(value, torch.Tensor) and name not in kernel.do_not_specialize_on_alignment)
                or (type(value) is int and value % 16 == 0 and not unspecialised)):
            aligned[(index,)] = [["tt.divisibility", 16]]  # as the launcher does; CUDA allocations are aligned
    options = {k: v for k, v in kwargs.items() if k in LAUNCH_OPTIONS}
    compiled = triton.compile(ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=aligned),
                              target=H100, options=options)
    assert compiled.asm["cubin"], kernel.fn.__name__
    return compiled


CUOBJDUMP = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"


def sass(cubin: bytes) -> list[tuple[int, str]]:
    """(address, instruction) of a cubin's SASS, by Triton's bundled cuobjdump."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as file:
        file.write(cubin)
        file.flush()
        dump = subprocess.run([str(CUOBJDUMP), "-sass", file.name], capture_output=True, text=True, check=True)
    return [(int(address, 16), text) for address, text in re.findall(r"/\*([0-9a-f]{4,})\*/\s+([^;]*);", dump.stdout)]


def spills(code: list[tuple[int, str]]) -> int:
    """Local-memory loads and stores (register spills) among these instructions."""
    return sum(bool(re.search(r"\b(?:LDL|STL)\b", text)) for _, text in code)


def first_loop_spills(cubin: bytes) -> int:
    """Spills inside the first loop of a cubin's SASS: in the GEMM kernels, the loop over K groups, which runs every
    step."""
    code = sass(cubin)
    loops = [(int(target, 16), address) for address, text in code
             for target in re.findall(r"BRA (0x[0-9a-f]+)", text) if int(target, 16) < address]
    assert loops, "no loop in the kernel"
    start, end = min(loops)
    return spills([(address, text) for address, text in code if start <= address <= end])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gla_decode_kernel_compiles(monkeypatch, dtype):
    N, H, Hkv, K = 4, 28, 4, 128
    packed = torch.zeros(N, (H + 3 * Hkv) * K, dtype=dtype)  # the layer's q|k|v|g, read through strides
    q, k, v, g = (x.view(N, -1, K) for x in packed.split([H * K, Hkv * K, Hkv * K, Hkv * K], dim=1))
    state = torch.zeros(6, Hkv, K, K)
    slots, warm = torch.zeros(N, dtype=torch.int32), torch.ones(N, dtype=torch.bool)
    for launch in recorded_launches(monkeypatch, lambda: fla.gla_decode(
            q, k, v, g, state=state, state_indices=slots, has_initial_state=warm, scale=0.1,
            out=torch.zeros(N + 2, H, K)[:N])):
        compile_for_h100(*launch)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gla_prefill_kernels_compile(monkeypatch, dtype):
    """triton_chunk's kernels at the 7B shape, without register spills, inputs strided as slices of the packed qkvg."""
    T, H, Hkv, K = 200, 28, 4, 128
    packed = torch.zeros(T, (H + 3 * Hkv) * K, dtype=dtype)
    q, k, v, g = (x.view(T, -1, K) for x in packed.split([H * K, Hkv * K, Hkv * K, Hkv * K], dim=1))
    state = torch.zeros(6, Hkv, K, K)
    slots, warm = torch.tensor([3, 0], dtype=torch.int32), torch.tensor([True, False])
    cu_seqlens = torch.tensor([0, 130, T], dtype=torch.int32)
    launches = recorded_launches(monkeypatch, lambda: triton_chunk.gla_varlen(
        q, k, v, g, state=state, state_indices=slots, cu_seqlens=cu_seqlens, has_initial_state=warm, scale=0.1))
    assert len(launches) == 3
    for kernel, args, kwargs in launches:  # computing A inside the output kernel once spilled ~390 registers
        assert spills(sass(compile_for_h100(kernel, args, kwargs).asm["cubin"])) == 0, kernel.fn.__name__


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("N,K,bias", [(3584, 18944, False), (4624, 3584, True)])
def test_gemv_kernel_compiles_without_spills(monkeypatch, dtype, N, K, bias):
    x, weight = torch.zeros(1, K, dtype=dtype), torch.zeros(N, K, dtype=dtype)
    b = torch.zeros(N, dtype=dtype) if bias else None
    (launch,) = recorded_launches(monkeypatch, lambda: gemv.gemv(x, weight, b))
    assert spills(sass(compile_for_h100(*launch).asm["cubin"])) == 0


def test_spike_stats_kernel_compiles(monkeypatch):
    s = torch.zeros(3, 5000, dtype=torch.int32)
    for launch in recorded_launches(monkeypatch, lambda: triton_stats.spike_stats(s, fan_out=4)):
        compile_for_h100(*launch)


@pytest.mark.parametrize("M", [1, 16, 64])
@pytest.mark.parametrize("N,K,overflow,with_bias,out_dtype", [
    (512, 3584, "1%", True, torch.bfloat16), (4608, 3584, "none", False, torch.float32),
])
def test_w8aspike_kernels_compile(monkeypatch, M, N, K, overflow, with_bias, out_dtype):
    weight, scales, bias = make_weight(N, K, overflow=overflow)
    x = torch.randn(M, K).bfloat16()

    s, vth, bias = torch.zeros(M, K, dtype=torch.int32), torch.ones(M, 1), bias if with_bias else None
    prefetching = triton_kernels.make_plan("gemv", M, N, K // 128, weight.ell_cols.shape[1], 132, bn=32, gb=2,
                                           num_stages=3, prefetch=True)
    dense_ell = triton_kernels.make_plan("dot", M, N, K // 128, weight.ell_cols.shape[1], 132, bm=64, bn=128,
                                         num_warps=8, num_stages=3, dense_ell=True)

    def linear():
        triton_kernels.spike_quantize(x, 3.0)
        triton_kernels.w8aspike_matmul(s, vth, weight, scales, bias, out_dtype=out_dtype)
        if M <= triton_kernels.GEMV_MAX_M:
            triton_kernels.w8aspike_matmul(s, vth, weight, scales, bias, plan=prefetching, out_dtype=out_dtype)
        triton_kernels.w8aspike_matmul(s, vth, weight, scales, bias, plan=dense_ell, out_dtype=out_dtype)

    kernels = set()
    for launch in recorded_launches(monkeypatch, linear):
        compile_for_h100(*launch)
        kernels.add(launch[0].fn.__name__)
    assert "spike_quantize_kernel" in kernels and len(kernels) >= 2, kernels


@pytest.mark.skipif(not CUOBJDUMP.exists(), reason="this triton has no cuobjdump")
@pytest.mark.parametrize("M", [1, 16, 64, 4096])
@pytest.mark.parametrize("N,K", [(4608, 3584), (3584, 18944)])
def test_w8aspike_default_plans_do_not_spill(monkeypatch, M, N, K):
    """The default plans' GEMM kernels at 7B shapes do not spill registers in their loop over K groups: a branch in
    the dot path's group loop once made the 128 x 128 prefill tile spill there in every step (132 local stores)."""
    weight, scales, bias = make_weight(N, K)
    s, vth = torch.zeros(M, K, dtype=torch.int32), torch.ones(M, 1)
    launches = recorded_launches(monkeypatch, lambda: triton_kernels.w8aspike_matmul(
        s, vth, weight, scales, bias, out_dtype=torch.bfloat16))
    for kernel, args, kwargs in launches:
        if kernel.fn.__name__ in ("w8aspike_gemv_kernel", "w8aspike_dot_kernel"):
            assert first_loop_spills(compile_for_h100(kernel, args, kwargs).asm["cubin"]) == 0, kernel.fn.__name__


def test_w8aspike_kernels_compile_once_per_plan_whatever_the_row_count(monkeypatch):
    """Row counts with the same plan differ only in row-dependent arguments, which the kernels do not specialise
    on: a prefill of an odd length reuses the kernels compiled for a multiple of 16 instead of compiling while
    serving (vLLM warned of exactly that on the H100)."""
    weight, scales, bias = make_weight(512, 3584)

    def specialisations(M):
        s, vth = torch.zeros(M, 3584, dtype=torch.int32), torch.ones(M, 1)
        launches = recorded_launches(monkeypatch, lambda: triton_kernels.w8aspike_matmul(s, vth, weight, scales, bias))
        keys = []
        for kernel, args, kwargs in launches:
            parameters = list(inspect.signature(kernel.fn).parameters)
            specialised = tuple((name, argument_type(value), value == 1, value % 16 == 0)
                                for name, value in zip(parameters, args)
                                if type(value) is int and name not in kernel.do_not_specialize)
            keys.append((kernel.fn.__name__, specialised, sorted(kwargs.items())))
        return keys

    assert specialisations(4096) == specialisations(4097) == specialisations(5003)


def triton_specialisation(kernel, args, kwargs) -> list:
    """What Triton keys a kernel's compiled variants on for these arguments (each argument's type and 16-byte
    alignment, integers' divisibility by 16 and equality to 1, the constexprs), by Triton's own argument binder."""
    binder = create_function_from_signature(kernel.signature, kernel.params, BaseBackend)
    return binder(*args, **kwargs)[1]


def test_gla_prefill_kernels_compile_once_whatever_the_decodes_before_them(monkeypatch):
    """In a step that mixes decodes and prefills, the prefills' state slots start `num_decodes` int32 into the step's
    slot tensor, so their address is 16-byte aligned only for a multiple of 4 decodes. Triton specialises on that
    alignment unless told not to: a step with 1 to 3 decodes compiled the scan kernel again while serving (vLLM's
    JIT monitor warned of it on an H100)."""
    T, H, Hkv, K = 200, 28, 4, 128
    decodes = 3
    packed = torch.zeros(decodes + T, (H + 3 * Hkv) * K)  # the layer's q|k|v|g, decode rows first
    all_slots = torch.arange(decodes + 2, dtype=torch.int32)
    state = torch.zeros(8, Hkv, K, K)

    def specialisations(num_decodes):
        rows = packed[num_decodes : num_decodes + T]
        q, k, v, g = (x.view(T, -1, K) for x in rows.split([H * K, Hkv * K, Hkv * K, Hkv * K], dim=1))
        launches = recorded_launches(monkeypatch, lambda: triton_chunk.gla_varlen(
            q, k, v, g, state=state, state_indices=all_slots[num_decodes : num_decodes + 2],
            cu_seqlens=torch.tensor([0, 130, T], dtype=torch.int32), has_initial_state=torch.tensor([True, False]),
            scale=0.1))
        return [triton_specialisation(*launch) for launch in launches]

    assert specialisations(0) == specialisations(1) == specialisations(2) == specialisations(3)
