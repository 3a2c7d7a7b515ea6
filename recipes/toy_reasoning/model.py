"""A small Llama in PyTorch whose parameters carry Hugging Face's LlamaForCausalLM names.

RMSNorm, rotate-half RoPE, grouped-query causal attention, SwiGLU, untied head: exactly what
transformers computes for `config.json`, so `save_hf` writes a checkpoint our converter turns into
GGUF. `forward(ids, pad_mask)` takes left- or right-padded batches: positions count real tokens
only and padded keys are masked, so a left-padded prompt decodes as it would alone.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class ModelShape:
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    n_ff: int
    n_vocab: int = 0
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


class RMSNorm(nn.Module):
    def __init__(self, n: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))
        self.eps = eps

    def forward(self, x):
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


class Attention(nn.Module):
    def __init__(self, s: ModelShape):
        super().__init__()
        self.s = s
        self.q_proj = nn.Linear(s.n_embd, s.n_head * s.head_dim, bias=False)
        self.k_proj = nn.Linear(s.n_embd, s.n_head_kv * s.head_dim, bias=False)
        self.v_proj = nn.Linear(s.n_embd, s.n_head_kv * s.head_dim, bias=False)
        self.o_proj = nn.Linear(s.n_head * s.head_dim, s.n_embd, bias=False)

    def forward(self, x, cos, sin, mask):
        b, t, _ = x.shape
        s = self.s
        q = self.q_proj(x).view(b, t, s.n_head, s.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, s.n_head_kv, s.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, s.n_head_kv, s.head_dim).transpose(1, 2)
        q, k = rope(q, cos, sin), rope(k, cos, sin)
        group = s.n_head // s.n_head_kv
        if group > 1:
            k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1))


class MLP(nn.Module):
    def __init__(self, s: ModelShape):
        super().__init__()
        self.gate_proj = nn.Linear(s.n_embd, s.n_ff, bias=False)
        self.up_proj = nn.Linear(s.n_embd, s.n_ff, bias=False)
        self.down_proj = nn.Linear(s.n_ff, s.n_embd, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, s: ModelShape):
        super().__init__()
        self.input_layernorm = RMSNorm(s.n_embd, s.norm_eps)
        self.self_attn = Attention(s)
        self.post_attention_layernorm = RMSNorm(s.n_embd, s.norm_eps)
        self.mlp = MLP(s)

    def forward(self, x, cos, sin, mask):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class Body(nn.Module):
    def __init__(self, s: ModelShape):
        super().__init__()
        self.embed_tokens = nn.Embedding(s.n_vocab, s.n_embd)
        self.layers = nn.ModuleList(Block(s) for _ in range(s.n_layer))
        self.norm = RMSNorm(s.n_embd, s.norm_eps)


def rope(x, cos, sin):
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class Llama(nn.Module):
    def __init__(self, s: ModelShape):
        super().__init__()
        self.shape = s
        self.model = Body(s)
        self.lm_head = nn.Linear(s.n_embd, s.n_vocab, bias=False)
        inv_freq = 1.0 / s.rope_theta ** (torch.arange(0, s.head_dim, 2, dtype=torch.float64) / s.head_dim)
        self.register_buffer("inv_freq", inv_freq.float(), persistent=False)
        self.apply(self._init)
        for name, p in self.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * s.n_layer))

    @staticmethod
    def _init(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)

    def forward(self, ids, pad_mask=None):
        """Logits (batch, time, vocab); pad_mask is True at real tokens (None: no padding)."""
        b, t = ids.shape
        if pad_mask is None:
            positions = torch.arange(t, device=ids.device).expand(b, t)
            causal = torch.ones(t, t, dtype=torch.bool, device=ids.device).tril()
            mask = causal[None, None]
        else:
            positions = (pad_mask.long().cumsum(-1) - 1).clamp(min=0)
            causal = torch.ones(t, t, dtype=torch.bool, device=ids.device).tril()
            mask = causal[None, None] & pad_mask[:, None, None, :]
            # a padded query row would see no key at all (NaN): let it see itself
            mask = mask | torch.eye(t, dtype=torch.bool, device=ids.device)[None, None]
        angles = positions[..., None].float() * self.inv_freq
        cos = torch.cat((angles.cos(), angles.cos()), -1)[:, None].to(self.lm_head.weight.dtype)
        sin = torch.cat((angles.sin(), angles.sin()), -1)[:, None].to(self.lm_head.weight.dtype)
        x = self.model.embed_tokens(ids)
        for layer in self.model.layers:
            x = layer(x, cos, sin, mask)
        return self.lm_head(self.model.norm(x))


def hf_config(s: ModelShape, special: dict[str, int]) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
        "hidden_size": s.n_embd, "intermediate_size": s.n_ff, "num_hidden_layers": s.n_layer,
        "num_attention_heads": s.n_head, "num_key_value_heads": s.n_head_kv, "vocab_size": s.n_vocab,
        "max_position_embeddings": 256, "rms_norm_eps": s.norm_eps, "rope_theta": s.rope_theta,
        "tie_word_embeddings": False, "torch_dtype": "float16", "attention_bias": False, "mlp_bias": False,
        **special,
    }


def save_hf(model: Llama, directory: Path, special: dict[str, int], tokenizer_files: Path) -> None:
    """config.json + model.safetensors (f16) + the tokenizer files copied from `tokenizer_files`."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(hf_config(model.shape, special), indent=2))
    tensors = {k: v.detach().to("cpu", torch.float16).contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (directory / name).write_bytes((tokenizer_files / name).read_bytes())


def load_hf(directory: Path, device="cpu") -> Llama:
    from safetensors.torch import load_file

    c = json.loads((directory / "config.json").read_text())
    s = ModelShape(c["hidden_size"], c["num_hidden_layers"], c["num_attention_heads"], c["num_key_value_heads"],
                   c["intermediate_size"], c["vocab_size"], c["rope_theta"], c["rms_norm_eps"])
    model = Llama(s)
    model.load_state_dict({k: v.float() for k, v in load_file(str(directory / "model.safetensors")).items()})
    return model.to(device)


def shape_dict(s: ModelShape) -> dict:
    return asdict(s)
