"""vLLM entry points of vllm-neuronchip: idempotent, imports deferred to the call.

`register` runs in every vLLM process (API server, engine core, workers);
`register_platform` decides whether the opt-in `neuronchip` platform replaces the host platform.
"""

ARCHITECTURE = "GLAswaForCausalLM"
MODEL_TYPE = "gla_swa"


def register() -> None:
    """vllm.general_plugins: HF config class, model architecture, w8aspike quantization, engine-config hook."""
    from transformers import AutoConfig
    from vllm import ModelRegistry

    from vllm_neuronchip.model_executor.config import GLAswaConfig

    AutoConfig.register(MODEL_TYPE, GLAswaConfig, exist_ok=True)
    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        # The class itself, not "module:Class": vLLM inspects a lazily registered class in a fresh Python
        # subprocess whenever its cache (~/.cache/vllm/modelinfos) lacks it, as on every new machine or
        # container (a cold `vllm serve` of the tiny model on 2 CPU cores: 33.1 s that way, 26.1 s this way,
        # benchmarks/engine_start.py). Importing the model module here takes 0.7 s there and initialises no
        # CUDA (fla is imported on first use).
        from vllm_neuronchip.model_executor.spikingbrain import GLAswaForCausalLM

        ModelRegistry.register_model(ARCHITECTURE, GLAswaForCausalLM)

    import vllm_neuronchip.quantization.w8aspike  # noqa: F401  (registers --quantization w8aspike)
    from vllm_neuronchip.model_executor.engine_config import register_engine_config_hook
    from vllm_neuronchip.platform.cpu_support import enable_amx_for_this_process

    from vllm_neuronchip.quantization.spike_recorder import publish_to_prometheus

    register_engine_config_hook()
    enable_amx_for_this_process()
    publish_to_prometheus()


def register_platform() -> str | None:
    """vllm.platform_plugins: None (host platform) unless NEURONCHIP_PLATFORM=1."""
    from vllm_neuronchip.settings import get_settings

    if not get_settings().platform:
        return None
    raise RuntimeError(
        "NEURONCHIP_PLATFORM=1 asks for the neuronchip platform, which this version does not ship yet; "
        "unset NEURONCHIP_PLATFORM to serve on the host platform."
    )
