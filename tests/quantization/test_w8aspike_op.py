"""The `vllm::w8aspike_linear` op under torch.compile: two layers of one shape trace to the same graph (vLLM
compiles each distinct piece of the model, so a per-layer constant in the graph multiplies the compile
time), and each call still runs its own layer's codes."""

import pytest
import torch

from vllm_neuronchip.quantization.reference import spiked_linear
from vllm_neuronchip.quantization.w8aspike import W8ASpikeConfig, W8ASpikeLinearMethod

IN_FEATURES, OUT_FEATURES = 256, 64


def compact_layer(prefix: str, seed: int) -> torch.nn.Module:
    """A loaded W8ASpike linear (compact layout: exact int16 codes, some beyond ±127, and group scales),
    finished by the method as vLLM finishes one."""
    method = W8ASpikeLinearMethod(W8ASpikeConfig(layout="compact"), prefix)
    generator = torch.Generator().manual_seed(seed)
    exact = torch.randint(-300, 301, (OUT_FEATURES, IN_FEATURES), dtype=torch.int16, generator=generator)
    layer = torch.nn.Module()
    layer.weight = torch.nn.Parameter(exact.clone(), requires_grad=False)
    layer.weight_scale = torch.nn.Parameter(torch.rand(OUT_FEATURES, IN_FEATURES // 128, generator=generator) * 1e-3)
    method.process_weights_after_loading(layer)
    layer.quant_method, layer.exact_codes = method, exact
    return layer


class Call(torch.nn.Module):
    def __init__(self, linear: torch.nn.Module):
        super().__init__()
        self.linear = linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear.quant_method.apply(self.linear, x)


def test_layers_compile_to_one_graph_and_run_their_own_codes():
    layers = [compact_layer(f"model.layers.{i}.mlp.gate_up_proj", seed=i) for i in (0, 2)]
    x = torch.randn(5, IN_FEATURES, generator=torch.Generator().manual_seed(7))
    graphs = []

    def capture(graph_module, example_inputs):
        graphs.append(graph_module.code)
        return graph_module.forward

    for layer in layers:
        torch._dynamo.reset()
        y = torch.compile(Call(layer), backend=capture, fullgraph=True)(x)
        expected = spiked_linear(x, layer.exact_codes, layer.weight_scale, None)
        torch.testing.assert_close(y.double(), expected, rtol=1e-5, atol=1e-5)
    assert len(graphs) == 2 and "w8aspike_linear" in graphs[0]
    assert graphs[0] == graphs[1], "a per-layer constant in the traced graph"


def test_a_weight_no_layer_holds_is_refused():
    layer = compact_layer("model.layers.0.mlp.gate_up_proj", seed=0)
    moved = layer.weight.clone()
    with pytest.raises(RuntimeError, match="no W8ASpike layer holds this weight"):
        torch.ops.vllm.w8aspike_linear(torch.randn(2, IN_FEATURES), moved, None)
