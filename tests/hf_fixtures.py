"""Tiny Hugging Face checkpoints for the converter tests, and an independent numpy forward pass.

`write_checkpoint(root, Case(...))` writes a complete HF model directory: config.json, random
weights in Hugging Face's own layout (safetensors, one file or sharded with an index, stored as
f32, f16 or bf16), a byte-level BPE tokenizer trained here with the `tokenizers` library
(tokenizer.json with the pre-tokenizer of the family: Llama 3 or Qwen2 regex, GPT-2, SmolLM),
tokenizer_config.json (chat template, BOS/EOS, add_bos_token) and generation_config.json; or a
SentencePiece tokenizer.model trained with `sentencepiece`. `reference_logits(ckpt, tokens)` runs
the checkpoint with numpy in float64 exactly as Hugging Face's LlamaForCausalLM /
Qwen2ForCausalLM compute it (RMSNorm, rotate-half RoPE on the unpermuted weights with rope_theta
and llama3 scaling, grouped-query causal attention, SwiGLU, q/k/v biases, tied or untied head).
Nothing here imports rast_convert.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

CORPUS_PATH = Path(__file__).resolve().parents[1] / "rast_gguf" / "synth" / "corpus.txt"
EXTRA_TEXT = """\
def fibonacci(n: int) -> list[int]:
    a, b = 0, 1
    out = []
    for _ in range(n):
        out.append(a)
        a, b = b, a + b
    return out
Numbers: 3 33 333 3333 2024-01-15 3.14159 1,000,000 0x1F
Déjà vu, naïve café, Straße, Ελληνικά, русский язык, 日本語のテキスト, 中文文本测试, 한국어 문장.
Emoji: 🚀 🦙 😀 ✅ 👍🏽 — dashes – and “quotes” ‘here’.
I've been told he's there, they'll say we'd know it's THEIR CAR'S.
"""
TOKENIZER_PRES = ("llama-bpe", "qwen2", "gpt-2", "smollm")
SPLIT_REGEX = {
    "llama-bpe": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    "qwen2": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
             r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
}
CHAT_TEMPLATE_QWEN = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                      "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
CHAT_TEMPLATE_LLAMA = ("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>"
                       "\n\n{{ m['content'] }}<|eot_id|>{% endfor %}")
USER_DEFINED_TOKEN = "<tool_call>"  # an added, non-special token


@dataclass(frozen=True)
class Case:
    arch: str = "llama"            # "llama", "mistral" or "qwen2"
    n_embd: int = 64
    n_layer: int = 2
    n_head: int = 4
    n_head_kv: int = 2
    n_ff: int = 128
    n_vocab_train: int = 600       # BPE training target (the tokenizer may be a little smaller)
    n_pad: int = 0                 # extra embedding rows beyond the tokenizer (config vocab_size - tokens)
    tied: bool = False
    dtype: str = "f32"             # stored dtype: "f32", "f16" or "bf16"
    shards: int = 1
    tokenizer: str = ""            # "llama-bpe", "qwen2", "gpt-2", "smollm" or "spm"; "" = the arch's own
    rope_theta: float = 10000.0
    rope_scaling: tuple = ()         # config.json's rope_scaling as (key, value) pairs (hashable)
    seed: int = 0

    @property
    def hf_arch(self) -> str:
        return {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}[self.arch]

    @property
    def tokenizer_kind(self) -> str:
        return self.tokenizer or ("qwen2" if self.arch == "qwen2" else "llama-bpe")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


@dataclass
class Checkpoint:
    path: Path
    case: Case
    config: dict
    weights: dict[str, np.ndarray]      # float64 values exactly as stored (after dtype rounding)
    n_tokens: int                       # tokens the tokenizer defines
    special_ids: dict[str, int] = field(default_factory=dict)

    @property
    def n_vocab(self) -> int:
        return self.config["vocab_size"]

    def hf_tokenizer(self):
        from tokenizers import Tokenizer

        return Tokenizer.from_file(str(self.path / "tokenizer.json"))


# --- tokenizers -------------------------------------------------------------------------------

def training_text() -> str:
    """The project's synthetic-model corpus plus code, digits and non-Latin scripts."""
    corpus = CORPUS_PATH.read_text(encoding="utf-8") if CORPUS_PATH.is_file() else ""
    return corpus + EXTRA_TEXT


def _special_tokens(kind: str) -> list[str]:
    if kind == "qwen2":
        return ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    return ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]


def train_bpe_tokenizer(kind: str, vocab_size: int):
    """A byte-level BPE of the given llama.cpp pre-tokenizer family, specials appended after training."""
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )

    tokenizer = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=kind in (
        "gpt-2", "smollm"))
    if kind in SPLIT_REGEX:
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(SPLIT_REGEX[kind]), behavior="isolated"), byte_level])
    elif kind == "smollm":
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    else:
        tokenizer.pre_tokenizer = byte_level
    if kind == "qwen2":
        tokenizer.normalizer = normalizers.NFC()
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tokenizer.train_from_iterator([training_text()], trainer=trainer)
    specials = _special_tokens(kind)
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    tokenizer.add_tokens([AddedToken(USER_DEFINED_TOKEN, special=False, normalized=False)])
    if kind == "llama-bpe":
        bos = specials[0]
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tokenizer.token_to_id(bos))])
    spec = json.loads(tokenizer.to_str())
    # Llama 3's tokenizer.json sets ignore_merges, which llama.cpp's llama-bpe type implements
    spec["model"]["ignore_merges"] = kind == "llama-bpe"
    return Tokenizer.from_str(json.dumps(spec))


def _write_bpe_tokenizer(path: Path, kind: str, vocab_size: int) -> tuple[int, dict[str, int], dict]:
    tokenizer = train_bpe_tokenizer(kind, vocab_size)
    tokenizer.save(str(path / "tokenizer.json"))
    ids = {t: tokenizer.token_to_id(t) for t in _special_tokens(kind)}
    if kind == "qwen2":
        special = {"bos": ids["<|endoftext|>"], "eos": ids["<|im_end|>"], "pad": ids["<|endoftext|>"]}
        tokenizer_config = {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
                            "add_bos_token": False, "chat_template": CHAT_TEMPLATE_QWEN}
    else:
        special = {"bos": ids["<|begin_of_text|>"], "eos": ids["<|eot_id|>"]}
        tokenizer_config = {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>",
                            "add_bos_token": kind == "llama-bpe", "chat_template": CHAT_TEMPLATE_LLAMA}
    return tokenizer.get_vocab_size(with_added_tokens=True), special, tokenizer_config


def _write_spm_tokenizer(path: Path, vocab_size: int) -> tuple[int, dict[str, int], dict]:
    import io

    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(training_text().splitlines()), model_writer=model, vocab_size=vocab_size,
        model_type="bpe", byte_fallback=True, normalization_rule_name="identity", remove_extra_whitespaces=False,
        split_digits=True, character_coverage=0.995, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        minloglevel=2, num_threads=1)
    (path / "tokenizer.model").write_bytes(model.getvalue())
    tokenizer_config = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "add_bos_token": True,
                        "add_eos_token": False, "chat_template": CHAT_TEMPLATE_LLAMA}
    return vocab_size, {"bos": 1, "eos": 2}, tokenizer_config


# --- weights ----------------------------------------------------------------------------------

def _round_to(values: np.ndarray, dtype: str) -> np.ndarray:
    """The values the checkpoint will hold (float64), i.e. `values` rounded to the stored dtype."""
    if dtype == "f32":
        return values.astype(np.float32).astype(np.float64)
    if dtype == "f16":
        return values.astype(np.float16).astype(np.float64)
    return bf16_bits_to_f32(f32_to_bf16_bits(values.astype(np.float32))).astype(np.float64)


def f32_to_bf16_bits(values: np.ndarray) -> np.ndarray:
    bits = values.astype(np.float32).view(np.uint32).astype(np.uint64)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


def bf16_bits_to_f32(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def random_weights(case: Case, n_vocab: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(case.seed)
    d, hd = case.n_embd, case.head_dim

    def matrix(rows, cols):
        return rng.normal(0.0, 1.0 / math.sqrt(cols), size=(rows, cols))

    def norm(n):
        return 1.0 + 0.1 * rng.normal(size=n)

    w = {"model.embed_tokens.weight": rng.normal(0.0, 1.0, size=(n_vocab, d))}
    for i in range(case.n_layer):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = norm(d)
        w[p + "self_attn.q_proj.weight"] = matrix(case.n_head * hd, d)
        w[p + "self_attn.k_proj.weight"] = matrix(case.n_head_kv * hd, d)
        w[p + "self_attn.v_proj.weight"] = matrix(case.n_head_kv * hd, d)
        if case.arch == "qwen2":
            w[p + "self_attn.q_proj.bias"] = 0.2 * rng.normal(size=case.n_head * hd)
            w[p + "self_attn.k_proj.bias"] = 0.2 * rng.normal(size=case.n_head_kv * hd)
            w[p + "self_attn.v_proj.bias"] = 0.2 * rng.normal(size=case.n_head_kv * hd)
        w[p + "self_attn.o_proj.weight"] = matrix(d, case.n_head * hd)
        w[p + "post_attention_layernorm.weight"] = norm(d)
        w[p + "mlp.gate_proj.weight"] = matrix(case.n_ff, d)
        w[p + "mlp.up_proj.weight"] = matrix(case.n_ff, d)
        w[p + "mlp.down_proj.weight"] = matrix(d, case.n_ff)
    w["model.norm.weight"] = norm(d)
    if not case.tied:
        w["lm_head.weight"] = matrix(n_vocab, d) * 4.0  # logits of a few units, like a trained model
    else:
        w["model.embed_tokens.weight"] *= 4.0 / math.sqrt(d)
    return {name: _round_to(values, case.dtype) for name, values in w.items()}


def write_safetensors(path: Path, tensors: dict[str, np.ndarray], dtype: str) -> None:
    """A safetensors file written by hand (numpy has no bfloat16, so safetensors.numpy cannot)."""
    header, blobs, offset = {}, [], 0
    for name in sorted(tensors):
        values = tensors[name]
        if dtype == "bf16":
            blob, tag = f32_to_bf16_bits(values.astype(np.float32)).tobytes(), "BF16"
        elif dtype == "f16":
            blob, tag = values.astype(np.float16).tobytes(), "F16"
        else:
            blob, tag = values.astype(np.float32).tobytes(), "F32"
        header[name] = {"dtype": tag, "shape": list(values.shape), "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    header["__metadata__"] = {"format": "pt"}
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    header_bytes += b" " * (-len(header_bytes) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header_bytes)))
        f.write(header_bytes)
        for blob in blobs:
            f.write(blob)


def write_weights(path: Path, weights: dict[str, np.ndarray], dtype: str, shards: int) -> None:
    if shards == 1:
        if dtype == "bf16":
            write_safetensors(path / "model.safetensors", weights, dtype)
        else:
            from safetensors.numpy import save_file

            np_dtype = np.float16 if dtype == "f16" else np.float32
            save_file({k: v.astype(np_dtype) for k, v in weights.items()}, str(path / "model.safetensors"),
                      metadata={"format": "pt"})
        return
    names = sorted(weights)
    weight_map = {}
    for shard in range(shards):
        file_name = f"model-{shard + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: weights[n] for n in names[shard::shards]}
        write_safetensors(path / file_name, part, dtype)
        weight_map.update(dict.fromkeys(part, file_name))
    index = {"metadata": {"total_size": sum(v.size for v in weights.values())}, "weight_map": weight_map}
    (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


# --- the checkpoint ---------------------------------------------------------------------------

def write_checkpoint(path: Path, case: Case) -> Checkpoint:
    path.mkdir(parents=True, exist_ok=True)
    if case.tokenizer_kind == "spm":
        n_tokens, special, tokenizer_config = _write_spm_tokenizer(path, case.n_vocab_train)
    else:
        n_tokens, special, tokenizer_config = _write_bpe_tokenizer(path, case.tokenizer_kind, case.n_vocab_train)
    n_vocab = n_tokens + case.n_pad
    config = {
        "architectures": [case.hf_arch], "model_type": case.arch, "hidden_act": "silu",
        "hidden_size": case.n_embd, "intermediate_size": case.n_ff, "num_hidden_layers": case.n_layer,
        "num_attention_heads": case.n_head, "num_key_value_heads": case.n_head_kv, "vocab_size": n_vocab,
        "max_position_embeddings": 512, "rms_norm_eps": 1e-5, "rope_theta": case.rope_theta,
        "tie_word_embeddings": case.tied, "torch_dtype": {"f32": "float32", "f16": "float16",
                                                          "bf16": "bfloat16"}[case.dtype],
        "bos_token_id": special["bos"], "eos_token_id": special["eos"],
    }
    if case.rope_scaling:
        config["rope_scaling"] = dict(case.rope_scaling)
    (path / "config.json").write_text(json.dumps(config, indent=2))
    (path / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    (path / "generation_config.json").write_text(json.dumps({"bos_token_id": special["bos"],
                                                             "eos_token_id": special["eos"]}))
    weights = random_weights(case, n_vocab)
    write_weights(path, weights, case.dtype, case.shards)
    return Checkpoint(path=path, case=case, config=config, weights=weights, n_tokens=n_tokens, special_ids=special)


def with_case(case: Case, **changes) -> Case:
    return replace(case, **changes)


# --- the reference forward pass ---------------------------------------------------------------

def _rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def _inv_freq(config: dict, head_dim: int) -> np.ndarray:
    inv_freq = 1.0 / config["rope_theta"] ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    scaling = config.get("rope_scaling")
    if scaling and scaling.get("rope_type") == "llama3":  # transformers' _compute_llama3_parameters
        factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
        old_ctx = scaling["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv_freq
        smooth = (old_ctx / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * inv_freq / factor + smooth * inv_freq
        inv_freq = np.where(wavelen > old_ctx / low, inv_freq / factor,
                            np.where(wavelen < old_ctx / high, inv_freq, smoothed))
    return inv_freq


def _rope(x: np.ndarray, positions: np.ndarray, inv_freq: np.ndarray) -> np.ndarray:
    """Hugging Face's rotate-half RoPE; x is (tokens, heads, head_dim)."""
    angles = positions[:, None] * inv_freq[None, :]
    cos = np.concatenate([np.cos(angles)] * 2, axis=-1)[:, None, :]
    sin = np.concatenate([np.sin(angles)] * 2, axis=-1)[:, None, :]
    half = x.shape[-1] // 2
    rotated = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin


def reference_logits(ckpt: Checkpoint, tokens: list[int]) -> np.ndarray:
    """(len(tokens), vocab_size) float64 logits of the checkpoint, computed independently of llama.cpp."""
    w, c = ckpt.weights, ckpt.config
    n_head, n_kv = c["num_attention_heads"], c["num_key_value_heads"]
    head_dim = c["hidden_size"] // n_head
    eps = c["rms_norm_eps"]
    n = len(tokens)
    positions = np.arange(n, dtype=np.float64)
    inv_freq = _inv_freq(c, head_dim)
    causal = np.triu(np.full((n, n), -np.inf), k=1)
    x = w["model.embed_tokens.weight"][tokens]
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = _rms_norm(x, w[p + "input_layernorm.weight"], eps)
        q, k, v = (h @ w[p + f"self_attn.{m}_proj.weight"].T + w.get(p + f"self_attn.{m}_proj.bias", 0.0)
                   for m in "qkv")
        q = _rope(q.reshape(n, n_head, head_dim), positions, inv_freq)
        k = _rope(k.reshape(n, n_kv, head_dim), positions, inv_freq)
        v = v.reshape(n, n_kv, head_dim)
        group = n_head // n_kv
        k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
        scores = np.einsum("qhd,khd->hqk", q, k) / math.sqrt(head_dim) + causal
        probs = np.exp(scores - scores.max(axis=-1, keepdims=True))
        probs /= probs.sum(axis=-1, keepdims=True)
        attn = np.einsum("hqk,khd->qhd", probs, v).reshape(n, n_head * head_dim)
        x = x + attn @ w[p + "self_attn.o_proj.weight"].T
        h = _rms_norm(x, w[p + "post_attention_layernorm.weight"], eps)
        gate, up = h @ w[p + "mlp.gate_proj.weight"].T, h @ w[p + "mlp.up_proj.weight"].T
        x = x + (gate / (1.0 + np.exp(-gate)) * up) @ w[p + "mlp.down_proj.weight"].T
    x = _rms_norm(x, w["model.norm.weight"], eps)
    head = w["model.embed_tokens.weight"] if c["tie_word_embeddings"] else w["lm_head.weight"]
    return x @ head.T


# --- a per-session cache of written checkpoints -----------------------------------------------

_CHECKPOINTS: dict[Case, Checkpoint] = {}


def cached_checkpoint(case: Case, tmp_path_factory) -> Checkpoint:
    """The checkpoint of `case`, written once per test session (under pytest's session temp dir)."""
    if case not in _CHECKPOINTS:
        _CHECKPOINTS[case] = write_checkpoint(tmp_path_factory.mktemp("hf") / "model", case)
    return _CHECKPOINTS[case]
