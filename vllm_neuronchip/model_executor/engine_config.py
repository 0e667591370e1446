"""Engine-config hook for GLAswaForCausalLM: checks and defaults applied before vLLM sizes caches.

vLLM calls `verify_and_update_config` for the architecture (via `MODELS_CONFIG_MAP`) before the
platform adjusts the config, so a bad tensor-parallel size fails with a clear message at startup.
"""

import hashlib
import json
import os
import tempfile
from pathlib import Path

from vllm.logger import init_logger

from vllm_neuronchip import ARCHITECTURE

logger = init_logger("vllm.neuronchip.engine_config")


def check_tensor_parallel_size(num_heads: int, num_kv_heads: int, tp_size: int) -> None:
    """Heads, KV heads and GLA states are sharded, never replicated: TP must divide the KV heads."""
    if num_kv_heads % tp_size or num_heads % tp_size:
        raise ValueError(
            f"tensor_parallel_size={tp_size} does not divide the model's {num_kv_heads} KV heads "
            f"and {num_heads} query heads; GLAswaForCausalLM supports TP sizes that divide "
            f"{num_kv_heads} (e.g. {[t for t in range(1, num_kv_heads + 1) if num_kv_heads % t == 0]})."
        )


class GLAswaEngineConfig:
    @staticmethod
    def verify_and_update_config(vllm_config) -> None:
        hf_config = vllm_config.model_config.hf_config
        check_tensor_parallel_size(
            hf_config.num_attention_heads,
            hf_config.num_key_value_heads,
            vllm_config.parallel_config.tensor_parallel_size,
        )
        _default_cpu_kv_cache(vllm_config)
        _full_precision_float32_dots(vllm_config)

    @staticmethod
    def verify_and_update_model_config(model_config) -> None:
        """Read the checkpoint's layout from its tensor names: a full-rank gate, the released W8ASpike
        scales. Runs before vLLM resolves quantization, so `vllm serve DIR` needs no flags."""
        from vllm_neuronchip.model_executor.checkpoint import checkpoint_tensor_names

        names = checkpoint_tensor_names(model_config.model)
        hf_config = model_config.hf_config
        if any(n.endswith(".attn.gk_proj.weight") for n in names):
            hf_config.gate_low_rank_dim = None
        _stop_chat_at_im_end(model_config)
        released_w8aspike = any(n.endswith(".weight_quantizer.scales") for n in names)
        if released_w8aspike and getattr(hf_config, "quantization_config", None) is None:
            hf_config.quantization_config = {"quant_method": "w8aspike", "format": "released"}
            model_config.model_arch_config.quantization_config = hf_config.quantization_config
            logger.info("Checkpoint has W8ASpike weight_quantizer.scales: serving it with w8aspike.")


CHAT_TURN_END = "<|im_end|>"


def _stop_chat_at_im_end(model_config) -> None:
    """Spec D10: generation stops at `<|im_end|>` too, though the released generation_config.json names
    only `<|endoftext|>`. Points vLLM at a copy of it with both, unless --generation-config was given."""
    directory = Path(model_config.model)
    if model_config.generation_config != "auto" or not (directory / "tokenizer.json").is_file():
        return
    added = json.loads((directory / "tokenizer.json").read_text()).get("added_tokens", [])
    turn_end = next((t["id"] for t in added if t["content"] == CHAT_TURN_END), None)
    source = directory / "generation_config.json"
    generation = json.loads(source.read_text()) if source.is_file() else {}
    eos = generation.get("eos_token_id", model_config.hf_config.eos_token_id)
    eos = [eos] if isinstance(eos, int) else list(eos or [])
    if turn_end is None or turn_end in eos:
        return
    generation["eos_token_id"] = eos + [turn_end]
    key = hashlib.sha256(str(directory.resolve()).encode()).hexdigest()[:16]
    patched = Path(tempfile.gettempdir()) / "vllm-neuronchip-generation" / key
    patched.mkdir(parents=True, exist_ok=True)
    (patched / "generation_config.json").write_text(json.dumps(generation))
    model_config.generation_config = str(patched)
    logger.info("Generation stops at %s too (token %d), as chat needs.", CHAT_TURN_END, turn_end)


def _default_cpu_kv_cache(vllm_config) -> None:
    from vllm.platforms import current_platform

    from vllm_neuronchip.settings import get_settings

    cache_config = vllm_config.cache_config
    if not current_platform.is_cpu() or cache_config.kv_cache_memory_bytes is not None:
        return
    if os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
        return
    gib = get_settings().cpu_kv_cache_gib
    cache_config.kv_cache_memory_bytes = int(gib * (1 << 30))
    logger.info("KV cache on CPU set to %.1f GiB (NEURONCHIP_CPU_KV_CACHE_GIB).", gib)


def _full_precision_float32_dots(vllm_config) -> None:
    """A float32 model computes in float32: Triton's dot products (fla's GLA chunks, vLLM's Triton attention)
    otherwise round float32 inputs to TF32 on GPUs, ~1e-3 relative error. Set before workers start, so they
    inherit it; TRITON_F32_DEFAULT=tf32 in the environment keeps the faster TF32 dots."""
    import torch
    from vllm.platforms import current_platform

    if vllm_config.model_config.dtype != torch.float32 or current_platform.is_cpu():
        return
    if os.environ.setdefault("TRITON_F32_DEFAULT", "ieee") == "ieee":
        logger.info("float32 model: Triton dot products in full float32 (TRITON_F32_DEFAULT=ieee).")


def register_engine_config_hook() -> None:
    from vllm.model_executor.models.config import MODELS_CONFIG_MAP

    MODELS_CONFIG_MAP.setdefault(ARCHITECTURE, GLAswaEngineConfig)
