"""Entry points: registered, idempotent, and the platform plugin stays out unless asked for."""

from importlib.metadata import entry_points

import pytest

from vllm_neuronchip import ARCHITECTURE, MODEL_TYPE, register, register_platform
from vllm_neuronchip.model_executor.engine_config import check_tensor_parallel_size


def test_entry_points_are_installed():
    general = {e.name: e.value for e in entry_points(group="vllm.general_plugins")}
    platform = {e.name: e.value for e in entry_points(group="vllm.platform_plugins")}
    assert general.get("neuronchip_model") == "vllm_neuronchip:register"
    assert platform.get("neuronchip") == "vllm_neuronchip:register_platform"


def test_general_plugin_registers_config_and_architecture_idempotently():
    from transformers import AutoConfig
    from vllm import ModelRegistry
    from vllm.plugins import load_general_plugins

    load_general_plugins()
    register()  # a second call in the same process must be harmless
    assert ARCHITECTURE in ModelRegistry.get_supported_archs()
    assert type(AutoConfig.for_model(MODEL_TYPE)).__name__ == "GLAswaConfig"


def test_vllm_inspects_the_architecture_without_a_subprocess(monkeypatch, tmp_path):
    """With an empty model-info cache (a new machine or container), vLLM would inspect a lazily registered class
    in a fresh Python subprocess (9 s on a 2-core CPU); the class registered itself is inspected in-process."""
    import vllm.model_executor.models.registry as registry
    from vllm import ModelRegistry

    def no_subprocess(fn):
        raise AssertionError("vLLM inspected GLAswaForCausalLM in a subprocess")

    register()
    monkeypatch.setenv("VLLM_CACHE_ROOT", str(tmp_path))
    monkeypatch.setattr(registry, "_run_in_subprocess", no_subprocess)
    info = ModelRegistry.models[ARCHITECTURE].inspect_model_cls()
    assert info.is_hybrid and info.has_inner_state


def test_platform_plugin_is_opt_in(neuronchip_env):
    neuronchip_env()
    assert register_platform() is None
    neuronchip_env(PLATFORM="1")
    with pytest.raises(RuntimeError, match="NEURONCHIP_PLATFORM"):
        register_platform()


@pytest.mark.parametrize("tp", [1, 2, 4])
def test_tensor_parallel_sizes_that_divide_kv_heads_are_accepted(tp):
    check_tensor_parallel_size(num_heads=28, num_kv_heads=4, tp_size=tp)


@pytest.mark.parametrize("tp", [3, 7, 8])
def test_other_tensor_parallel_sizes_are_refused_clearly(tp):
    with pytest.raises(ValueError, match=rf"tensor_parallel_size={tp} does not divide .* 4 KV heads"):
        check_tensor_parallel_size(num_heads=28, num_kv_heads=4, tp_size=tp)


@pytest.mark.parametrize(
    "dtype,on_cpu,preset,expected",
    [("float32", False, None, "ieee"), ("float32", False, "tf32", "tf32"), ("bfloat16", False, None, None),
     ("float32", True, None, None)],
)
def test_float32_models_get_full_precision_triton_dots_on_gpus(monkeypatch, dtype, on_cpu, preset, expected):
    import os
    import types

    import torch
    from vllm.platforms import current_platform

    from vllm_neuronchip.model_executor import engine_config

    monkeypatch.delenv("TRITON_F32_DEFAULT", raising=False)
    if preset:
        monkeypatch.setenv("TRITON_F32_DEFAULT", preset)
    monkeypatch.setattr(current_platform, "is_cpu", lambda: on_cpu)
    config = types.SimpleNamespace(model_config=types.SimpleNamespace(dtype=getattr(torch, dtype)))
    engine_config._full_precision_float32_dots(config)
    assert os.environ.get("TRITON_F32_DEFAULT") == expected
