"""HF config class for SpikingBrain-7B (`model_type: gla_swa`), registered without remote code.

Field names and defaults follow the released `configuration_gla_swa.py`; `layer_types` is derived
from `attn_layers` so vLLM sees a hybrid of linear-attention (GLA) and sliding-window layers.
"""

from transformers import PretrainedConfig

GLA_LAYER = "linear_attention"
SWA_LAYER = "sliding_attention"


class GLAswaConfig(PretrainedConfig):
    model_type = "gla_swa"
    keys_to_ignore_at_inference = ["past_key_values"]

    vocab_size: int = 152064
    hidden_size: int = 3584
    num_hidden_layers: int = 28
    attn_mode: str = "chunk"
    num_attention_heads: int = 28
    num_key_value_heads: int = 4
    head_dim: int | None = None
    use_short_conv: bool = False
    conv_size: int = 4
    intermediate_size: int = 18944
    hidden_act: str = "swish"
    max_position_embeddings: int = 4096 * 32
    sliding_window: int = 4096
    elementwise_affine: bool = True
    norm_eps: float = 1e-6
    rope_theta: float = 1e6
    attention_dropout: float = 0.0
    use_cache: bool = True
    pad_token_id: int | None = None
    bos_token_id: int | None = 151643
    eos_token_id: int | list[int] | None = 151643
    tie_word_embeddings: bool = False
    initializer_range: float = 0.02
    fuse_cross_entropy: bool = True
    attn_layers: list[int] | None = None
    # Constants of the original GLA module (spec D3); read from config.json when present.
    gate_logit_normalizer: float = 16.0
    gate_low_rank_dim: int | None = 16
    quant_weight_group_size: int | None = None
    layer_types: list[str] | None = None
    # GLA has no positions and SWA's RoPE only relates positions inside the window, so the model has no
    # length limit of its own: vLLM accepts --max-model-len up to this without VLLM_ALLOW_LONG_MAX_MODEL_LEN
    # (the default stays max_position_embeddings, or the tokenizer's model_max_length).
    model_max_length: int = 1 << 21

    def __post_init__(self, **kwargs):
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.attn_layers is None:
            self.attn_layers = list(range(1, self.num_hidden_layers, 2))
        self.layer_types = [
            SWA_LAYER if i in self.attn_layers else GLA_LAYER for i in range(self.num_hidden_layers)
        ]
        super().__post_init__(**kwargs)

    @property
    def rms_norm_eps(self) -> float:
        return self.norm_eps
