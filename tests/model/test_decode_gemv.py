"""Which linear layers `install_decode_gemv` hands to the `vllm::neuronchip_linear` op, and the op off CUDA (where it
is F.linear). The GEMV itself: tests/ops/test_gemv.py; the model through it on a GPU: tests/gpu/test_gpu_model.py."""

import pytest
import torch
import torch.nn.functional as F
import vllm.model_executor.parameter
from torch import nn
from vllm.model_executor.layers.linear import ReplicatedLinear, UnquantizedLinearMethod

from vllm_neuronchip.model_executor import decode_gemv
from vllm_neuronchip.model_executor.decode_gemv import DecodeGemvLinearMethod, install_decode_gemv, linear_of
from vllm_neuronchip.quantization.w8aspike import W8ASpikeConfig, W8ASpikeLinearMethod


@pytest.fixture(autouse=True)
def decode_gemv_on(neuronchip_env):
    neuronchip_env(DECODE_GEMV="1")


@pytest.fixture
def linears(monkeypatch):
    """A float linear, and under W8ASpike a quantized one and one it leaves in float (down_proj, spec D7); vLLM's
    parameters ask for a tensor-parallel group, which this process has none of: rank 0 of 1."""
    monkeypatch.setattr(vllm.model_executor.parameter, "get_tensor_model_parallel_rank", lambda: 0)
    monkeypatch.setattr(vllm.model_executor.parameter, "get_tensor_model_parallel_world_size", lambda: 1)
    w8aspike = W8ASpikeConfig(layout="compact")
    return nn.ModuleDict({
        "plain": ReplicatedLinear(256, 64, bias=True, disable_tp=True, prefix="model.layers.0.attn.gk_proj"),
        "spiked": ReplicatedLinear(256, 64, quant_config=w8aspike, disable_tp=True,
                                   prefix="model.layers.0.mlp.gate_up_proj"),
        "kept_float": ReplicatedLinear(256, 64, quant_config=w8aspike, disable_tp=True,
                                       prefix="model.layers.0.mlp.down_proj"),
    })


def test_install_changes_only_the_unquantized_linears(monkeypatch, linears):
    monkeypatch.setattr(decode_gemv, "vllm_would_run_f_linear", lambda: True)
    assert type(linears["kept_float"].quant_method) is UnquantizedLinearMethod
    assert install_decode_gemv(linears) == 2
    assert isinstance(linears["plain"].quant_method, DecodeGemvLinearMethod)
    assert isinstance(linears["kept_float"].quant_method, DecodeGemvLinearMethod)
    assert isinstance(linears["spiked"].quant_method, W8ASpikeLinearMethod)
    assert linear_of(linears["plain"]) is torch.ops.vllm.neuronchip_linear
    assert linear_of(linears["spiked"]) is F.linear
    layer = linears["plain"]
    nn.init.normal_(layer.weight)
    nn.init.normal_(layer.bias)
    x = torch.randn(1, 256)
    torch.testing.assert_close(layer(x)[0], F.linear(x, layer.weight, layer.bias), rtol=0, atol=0)


def test_off_by_the_setting(monkeypatch, neuronchip_env, linears):
    monkeypatch.setattr(decode_gemv, "vllm_would_run_f_linear", lambda: True)
    neuronchip_env(DECODE_GEMV="0")
    assert install_decode_gemv(linears) == 0
    assert type(linears["plain"].quant_method) is UnquantizedLinearMethod


def test_vllm_linears_stay_where_vllm_would_not_run_f_linear(linears):
    """On this CPU vLLM repacks the weights of its linears (and drops the originals): nothing may change."""
    assert not decode_gemv.vllm_would_run_f_linear()
    assert install_decode_gemv(linears) == 0
    assert type(linears["plain"].quant_method) is UnquantizedLinearMethod


def test_op_is_opaque_to_torch_compile():
    """Dynamo keeps the op whole (its fake gives the shape), so the batch-size choice happens at run time."""
    weight, bias = torch.randn(48, 32), torch.randn(48)
    graphs = []

    def capture(graph_module, example_inputs):
        graphs.append(graph_module.code)
        return graph_module.forward

    linear = torch.compile(lambda x: torch.ops.vllm.neuronchip_linear(x, weight, bias), backend=capture, fullgraph=True)
    for rows in (1, 5):
        x = torch.randn(rows, 32)
        torch.testing.assert_close(linear(x), F.linear(x, weight, bias), rtol=0, atol=0)
    assert graphs and all("neuronchip_linear" in code for code in graphs)
