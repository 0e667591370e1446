"""SpikingBrain-7B (`GLAswaForCausalLM`) for vLLM V1: GLA and sliding-window layers, hybrid hooks.

Reads top to bottom: MLP -> sliding-window attention -> decoder layer -> model -> causal LM.
Checkpoint tensors keep their original names (spec §2.1); q/k/v and gate/up are fused here.
"""

from collections.abc import Iterable

import torch
from torch import nn
from vllm.compilation.decorators import support_torch_compile
from vllm.config import VllmConfig
from vllm.distributed import get_tensor_model_parallel_world_size
from vllm.logger import init_logger
from vllm.model_executor.layers.activation import SiluAndMul
from vllm.model_executor.layers.attention import Attention
from vllm.model_executor.layers.layernorm import RMSNorm
from vllm.model_executor.layers.linear import MergedColumnParallelLinear, QKVParallelLinear, RowParallelLinear
from vllm.model_executor.layers.logits_processor import LogitsProcessor
from vllm.model_executor.layers.mamba.mamba_utils import MambaStateCopyFuncCalculator
from vllm.model_executor.layers.rotary_embedding import get_rope
from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead, VocabParallelEmbedding
from vllm.model_executor.model_loader.weight_utils import default_weight_loader
from vllm.model_executor.models.interfaces import HasInnerState, IsHybrid, SupportsQuant
from vllm.model_executor.models.utils import make_layers, maybe_prefix
from vllm.sequence import IntermediateTensors

from vllm_neuronchip.model_executor.checkpoint import checked_tensors, expected_tensor_shapes
from vllm_neuronchip.model_executor.config import SWA_LAYER, GLAswaConfig
from vllm_neuronchip.model_executor.decode_gemv import install_decode_gemv
from vllm_neuronchip.model_executor.gla_layer import GatedLinearAttention, gla_state_shape
from vllm_neuronchip.model_executor.sliding_window_flash_attn import keep_window_in_schedule
from vllm_neuronchip.quantization.checkpoint import expected_w8aspike_tensors
from vllm_neuronchip.quantization.reference import kv_int8, spike_counts
from vllm_neuronchip.quantization.w8aspike import W8ASpikeConfig, loadable_tensors

logger = init_logger("vllm.neuronchip.model")

# (fused vLLM parameter, checkpoint sub-module, shard id)
STACKED_PARAMS = (
    ("qkv_proj", "q_proj", "q"),
    ("qkv_proj", "k_proj", "k"),
    ("qkv_proj", "v_proj", "v"),
    ("gate_up_proj", "gate_proj", 0),
    ("gate_up_proj", "up_proj", 1),
)


class GLAswaMLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)), no biases."""

    def __init__(self, config: GLAswaConfig, quant_config, prefix: str):
        super().__init__()
        if config.hidden_act not in ("swish", "silu"):
            raise ValueError(f"hidden_act={config.hidden_act!r} is not supported; SpikingBrain uses 'swish'")
        self.gate_up_proj = MergedColumnParallelLinear(
            config.hidden_size, [config.intermediate_size] * 2,
            bias=False, quant_config=quant_config, prefix=f"{prefix}.gate_up_proj",
        )
        self.down_proj = RowParallelLinear(
            config.intermediate_size, config.hidden_size,
            bias=False, quant_config=quant_config, prefix=f"{prefix}.down_proj",
        )
        self.act_fn = SiluAndMul()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_up_proj(x)[0]))[0]


class SlidingWindowAttention(nn.Module):
    """Softmax attention over the current token and the `sliding_window` previous ones (spec D2)."""

    def __init__(self, config: GLAswaConfig, vllm_config: VllmConfig, prefix: str):
        super().__init__()
        tp_size = get_tensor_model_parallel_world_size()
        d = self.head_dim = config.head_dim
        self.num_heads = config.num_attention_heads // tp_size
        self.num_kv_heads = config.num_key_value_heads // tp_size
        self.q_size, self.kv_size = self.num_heads * d, self.num_kv_heads * d
        quant_config = vllm_config.quant_config
        self.w8aspike = quant_config if isinstance(quant_config, W8ASpikeConfig) else None
        self.qkv_proj = QKVParallelLinear(
            config.hidden_size, d, config.num_attention_heads, config.num_key_value_heads,
            bias=True, quant_config=quant_config, prefix=f"{prefix}.qkv_proj",
        )
        self.o_proj = RowParallelLinear(
            config.num_attention_heads * d, config.hidden_size,
            bias=False, quant_config=quant_config, prefix=f"{prefix}.o_proj",
        )
        # RoPE only relates positions inside the window, so the table just has to cover max_model_len.
        max_position = max(config.max_position_embeddings, vllm_config.model_config.max_model_len)
        self.rotary_emb = get_rope(
            d, max_position=max_position, is_neox_style=True,
            rope_parameters={"rope_type": "default", "rope_theta": config.rope_theta},
        )
        self.attn = Attention(
            self.num_heads, d, d**-0.5, num_kv_heads=self.num_kv_heads,
            cache_config=vllm_config.cache_config, quant_config=quant_config,
            per_layer_sliding_window=config.sliding_window + 1, prefix=f"{prefix}.attn",
        )
        keep_window_in_schedule(self.attn)

    def forward(self, positions: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv_proj(x)[0].split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q, k = self.rotary_emb(positions, q, k)
        if self.w8aspike:
            q, k, v = self.quantize_attention_inputs(q, k, v)
        return self.o_proj(self.attn(q, k, v))[0]

    def quantize_attention_inputs(self, q, k, v):
        """W8ASpike after RoPE: Q spiked per (token, head), K and V INT8 per (token, KV head) (spec D7);
        per token, so the KV cache holds the quantized values."""
        s, vth = spike_counts(q.view(-1, self.num_heads, self.head_dim), self.w8aspike.k)
        q = (s * vth).to(q.dtype).view_as(q)
        k, v = (torch.mul(*kv_int8(t.view(-1, self.num_kv_heads, self.head_dim))).to(t.dtype).view_as(t) for t in (k, v))
        return q, k, v


class GLAswaDecoderLayer(nn.Module):
    """Pre-norm block: h + attn(norm(h)), then + mlp(norm(.)) with the fused residual add-norm."""

    def __init__(self, config: GLAswaConfig, vllm_config: VllmConfig, prefix: str):
        super().__init__()
        layer_index = int(prefix.rsplit(".", 1)[-1])
        self.is_gla = config.layer_types[layer_index] != SWA_LAYER
        self.attn_norm = RMSNorm(config.hidden_size, eps=config.norm_eps)
        if self.is_gla:
            self.attn = GatedLinearAttention(config, vllm_config, prefix=f"{prefix}.attn")
        else:
            self.attn = SlidingWindowAttention(config, vllm_config, prefix=f"{prefix}.attn")
        self.mlp_norm = RMSNorm(config.hidden_size, eps=config.norm_eps)
        self.mlp = GLAswaMLP(config, vllm_config.quant_config, prefix=f"{prefix}.mlp")

    def forward(self, positions, hidden_states, residual):
        if residual is None:
            residual, x = hidden_states, self.attn_norm(hidden_states)
        else:
            x, residual = self.attn_norm(hidden_states, residual)
        attn_out = self.attn(x, positions) if self.is_gla else self.attn(positions, x)
        x, residual = self.mlp_norm(attn_out, residual)
        return self.mlp(x), residual


@support_torch_compile
class GLAswaModel(nn.Module):
    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        super().__init__()
        config = vllm_config.model_config.hf_config
        self.embeddings = VocabParallelEmbedding(config.vocab_size, config.hidden_size, prefix=f"{prefix}.embeddings")
        _, _, self.layers = make_layers(
            config.num_hidden_layers,
            lambda prefix: GLAswaDecoderLayer(config, vllm_config, prefix),
            prefix=f"{prefix}.layers",
        )
        self.norm = RMSNorm(config.hidden_size, eps=config.norm_eps)

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embeddings(input_ids)

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors: IntermediateTensors | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        hidden_states = inputs_embeds if inputs_embeds is not None else self.embed_input_ids(input_ids)
        residual = None
        for layer in self.layers:
            hidden_states, residual = layer(positions, hidden_states, residual)
        return self.norm(hidden_states, residual)[0]


class GLAswaForCausalLM(nn.Module, HasInnerState, IsHybrid, SupportsQuant):
    packed_modules_mapping = {"qkv_proj": ["q_proj", "k_proj", "v_proj"], "gate_up_proj": ["gate_proj", "up_proj"]}

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        super().__init__()
        config = vllm_config.model_config.hf_config
        self.config = config
        self.quant_config = vllm_config.quant_config
        self.model = GLAswaModel(vllm_config=vllm_config, prefix=maybe_prefix(prefix, "model"))
        self.lm_head = ParallelLMHead(config.vocab_size, config.hidden_size, prefix=maybe_prefix(prefix, "lm_head"))
        if config.tie_word_embeddings:
            self.lm_head = self.lm_head.tie_weights(self.model.embeddings)
        self.logits_processor = LogitsProcessor(config.vocab_size)

    # Hybrid-cache hooks: vLLM sizes the GLA state pages from these before building the model.
    @classmethod
    def get_mamba_state_shape_from_config(cls, vllm_config: VllmConfig) -> tuple[tuple[int, int, int]]:
        return (gla_state_shape(vllm_config.model_config.hf_config, vllm_config.parallel_config.tensor_parallel_size),)

    @classmethod
    def get_mamba_state_dtype_from_config(cls, vllm_config: VllmConfig) -> tuple[torch.dtype]:
        return (torch.float32,)

    @classmethod
    def get_mamba_state_copy_func(cls) -> tuple:
        return MambaStateCopyFuncCalculator.linear_attention_state_copy_func()

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.embed_input_ids(input_ids)

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors: IntermediateTensors | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self.model(input_ids, positions, intermediate_tensors, inputs_embeds)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        return self.logits_processor(self.lm_head, hidden_states)

    def process_weights_after_loading(self) -> None:
        """vLLM's model-level hook, after each layer's own processing (and after dummy weights too)."""
        for module in self.modules():
            if isinstance(module, GatedLinearAttention):
                module.fuse_gate_into_qkv()
        if layers := install_decode_gemv(self):
            logger.info("%d unquantized linear layers run a one-kernel GEMV for a single token", layers)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        params = dict(self.named_parameters())
        loaded = set()
        if isinstance(self.quant_config, W8ASpikeConfig):
            layout = expected_w8aspike_tensors(self.config, self.quant_config.layout)
            tensors = loadable_tensors(checked_tensors(weights, {n: shape for n, (shape, _) in layout.items()}),
                                       self.quant_config)
        else:
            tensors = checked_tensors(weights, expected_tensor_shapes(self.config))
        for name, tensor in tensors:
            for fused, original, shard in STACKED_PARAMS:
                if f".{original}." in name:
                    param_name = name.replace(f".{original}.", f".{fused}.")
                    params[param_name].weight_loader(params[param_name], tensor, shard)
                    break
            else:
                param_name = name
                param = params[param_name]
                getattr(param, "weight_loader", default_weight_loader)(param, tensor)
            loaded.add(param_name)
        return loaded
