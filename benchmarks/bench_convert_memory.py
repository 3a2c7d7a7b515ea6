"""Peak memory of `convert_hf_to_gguf` on a checkpoint of a few hundred MB.

Writes a random Llama checkpoint (bf16, two safetensors shards, a byte-level BPE tokenizer from
tests/hf_fixtures.py, vocabulary padded to 32000 rows) of about `--size-mb` into a temporary
directory, tensor by tensor so this process stays small too, then converts it once per output
type, each in a fresh subprocess that reports its own `ru_maxrss` twice: after importing
rast_convert (the baseline: numpy, llama.cpp, tokenizers) and after converting. The difference is
what the conversion itself needed; compare it with the checkpoint size. A sampling thread also
records the peaks of anonymous and of file-backed resident memory (/proc/self/status RssAnon,
RssFile): mmap'd file pages count in ru_maxrss but are page cache the kernel can drop.

    .venv/bin/python benchmarks/bench_convert_memory.py --size-mb 300 --types f16 q8_0 q4_k_m
"""

from __future__ import annotations

import argparse
import json
import math
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

CHILD = """
import resource, sys, threading, time
from rast_convert import convert_hf_to_gguf

def status_kib(*keys):
    with open("/proc/self/status") as f:
        fields = dict(line.split(":", 1) for line in f)
    return [int(fields[k].split()[0]) for k in keys]

peak_anon = peak_file = 0
done = threading.Event()

def sample():  # peak anonymous vs file-backed (mmap'd, reclaimable) resident memory
    global peak_anon, peak_file
    while not done.wait(0.005):
        anon, file = status_kib("RssAnon", "RssFile")
        peak_anon, peak_file = max(peak_anon, anon), max(peak_file, file)

base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
sampler = threading.Thread(target=sample)
sampler.start()
start = time.perf_counter()
convert_hf_to_gguf(sys.argv[1], sys.argv[2], out_type=sys.argv[3], progress=False, n_threads=2)
seconds = time.perf_counter() - start
done.set()
sampler.join()
print(base, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, peak_anon, peak_file, seconds)
"""


def model_shapes(n_embd: int, n_layer: int, n_ff: int, n_head: int, n_head_kv: int, n_vocab: int):
    head_dim = n_embd // n_head
    shapes = {"model.embed_tokens.weight": (n_vocab, n_embd), "lm_head.weight": (n_vocab, n_embd),
              "model.norm.weight": (n_embd,)}
    for i in range(n_layer):
        p = f"model.layers.{i}."
        shapes.update({
            p + "input_layernorm.weight": (n_embd,), p + "post_attention_layernorm.weight": (n_embd,),
            p + "self_attn.q_proj.weight": (n_head * head_dim, n_embd),
            p + "self_attn.k_proj.weight": (n_head_kv * head_dim, n_embd),
            p + "self_attn.v_proj.weight": (n_head_kv * head_dim, n_embd),
            p + "self_attn.o_proj.weight": (n_embd, n_head * head_dim),
            p + "mlp.gate_proj.weight": (n_ff, n_embd), p + "mlp.up_proj.weight": (n_ff, n_embd),
            p + "mlp.down_proj.weight": (n_embd, n_ff),
        })
    return shapes


def write_bf16_shard(path: Path, shapes: dict[str, tuple[int, ...]], rng: np.random.Generator) -> None:
    """A bf16 safetensors file, each tensor generated and written on its own."""
    from hf_fixtures import f32_to_bf16_bits

    header, offset = {}, 0
    for name in sorted(shapes):
        n_bytes = 2 * math.prod(shapes[name])
        header[name] = {"dtype": "BF16", "shape": list(shapes[name]), "data_offsets": [offset, offset + n_bytes]}
        offset += n_bytes
    header_bytes = json.dumps(header).encode()
    header_bytes += b" " * (-len(header_bytes) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header_bytes)) + header_bytes)
        for name in sorted(shapes):
            shape = shapes[name]
            values = (rng.standard_normal(shape, dtype=np.float32) / math.sqrt(shape[-1]) if len(shape) == 2
                      else np.ones(shape, dtype=np.float32))
            f.write(f32_to_bf16_bits(values).tobytes())


def write_checkpoint(root: Path, size_mb: float) -> Path:
    from hf_fixtures import train_bpe_tokenizer

    n_embd, n_ff, n_head, n_head_kv, n_vocab = 1024, 2816, 16, 4, 32000
    per_layer = sum(math.prod(s) for s in model_shapes(n_embd, 1, n_ff, n_head, n_head_kv, 0).values())
    n_layer = max(1, round((size_mb * 1e6 / 2 - 2 * n_vocab * n_embd) / per_layer))
    shapes = model_shapes(n_embd, n_layer, n_ff, n_head, n_head_kv, n_vocab)
    names = sorted(shapes)
    rng = np.random.default_rng(0)
    weight_map = {}
    for shard, part in enumerate((names[0::2], names[1::2])):
        file_name = f"model-{shard + 1:05d}-of-00002.safetensors"
        write_bf16_shard(root / file_name, {n: shapes[n] for n in part}, rng)
        weight_map.update(dict.fromkeys(part, file_name))
    (root / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    tokenizer = train_bpe_tokenizer("llama-bpe", 1000)
    tokenizer.save(str(root / "tokenizer.json"))
    (root / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<|begin_of_text|>",
                                                            "eos_token": "<|eot_id|>"}))
    (root / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "hidden_size": n_embd, "intermediate_size": n_ff,
        "num_hidden_layers": n_layer, "num_attention_heads": n_head, "num_key_value_heads": n_head_kv,
        "vocab_size": n_vocab, "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
        "tie_word_embeddings": False, "torch_dtype": "bfloat16"}))
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=float, default=300)
    parser.add_argument("--types", nargs="+", default=["f16", "q8_0", "q4_k_m"])
    parser.add_argument("--write-only", type=Path, help=argparse.SUPPRESS)  # the checkpoint-writing child
    args = parser.parse_args()
    if args.write_only:
        write_checkpoint(args.write_only, args.size_mb)
        return
    with tempfile.TemporaryDirectory(prefix="rast-convert-bench-") as tmp:
        model = Path(tmp) / "model"
        model.mkdir()
        # Written by a child: Linux children inherit the parent's ru_maxrss, so this one stays small.
        subprocess.run([sys.executable, __file__, "--write-only", str(model), "--size-mb", str(args.size_mb)],
                       check=True)
        checkpoint_mb = sum(p.stat().st_size for p in model.glob("*.safetensors")) / 2**20
        print(f"checkpoint: {checkpoint_mb:.0f} MiB of bf16 safetensors (2 shards)")
        print(f"{'type':7} {'maxrss after import':>19} {'maxrss peak':>11} {'peak - import':>13} "
              f"{'peak RssAnon':>12} {'peak RssFile':>12} {'seconds':>7}   (MiB)")
        for out_type in args.types:
            out = Path(tmp) / f"model.{out_type}.gguf"
            result = subprocess.run([sys.executable, "-c", CHILD, str(model), str(out), out_type],
                                    capture_output=True, text=True, check=True)
            base, peak, anon, file, seconds = (float(v) for v in result.stdout.split())
            base, peak, anon, file = (kib / 1024 for kib in (base, peak, anon, file))
            print(f"{out_type:7} {base:19.0f} {peak:11.0f} {peak - base:13.0f} {anon:12.0f} {file:12.0f} "
                  f"{seconds:7.1f}   maxrss peak = {100 * peak / checkpoint_mb:.0f}% of the checkpoint")
            out.unlink()


if __name__ == "__main__":
    main()
