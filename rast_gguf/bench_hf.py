"""The baseline a researcher would write without rast-gguf: the same three-model RAST arithmetic
in PyTorch + Transformers (bf16 on the GPU, KV cache, greedy, batch 1), with random weights from
configs of the same shapes as `rast bench`'s GGUF models (nothing is downloaded).

`bench_transformers(setup)` returns a run dict like rast_gguf.bench's (mode "transformers"), or
None when torch, transformers or a CUDA device is missing. Per step: the three models each take
one token with their KV cache, then z = z_large + alpha * (z_tuned - z_base) over the shared
vocabulary and argmax. GPU memory is torch's peak reservation.
"""

from __future__ import annotations

import time


def _config(shape):
    import transformers

    common = dict(vocab_size=shape.n_vocab, hidden_size=shape.n_embd, intermediate_size=shape.n_ff,
                  num_hidden_layers=shape.n_layer, num_attention_heads=shape.n_head,
                  num_key_value_heads=shape.n_head_kv, tie_word_embeddings=shape.tie_embeddings,
                  max_position_embeddings=4096)
    if shape.arch == "qwen2":
        return transformers.Qwen2Config(**common)
    return transformers.LlamaConfig(**common)


def _model(shape, torch):
    import transformers

    torch.manual_seed(0)
    with torch.device("cuda"):
        try:
            model = transformers.AutoModelForCausalLM.from_config(_config(shape), dtype=torch.bfloat16)
        except TypeError:  # transformers < 4.56 calls it torch_dtype
            model = transformers.AutoModelForCausalLM.from_config(_config(shape), torch_dtype=torch.bfloat16)
    return model.eval()


def bench_transformers(setup) -> dict | None:
    try:
        import torch
        import transformers  # noqa: F401
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    from rast_gguf.synth import SHAPES

    large_shape, small_shape = SHAPES[setup.large], SHAPES[setup.small]
    torch.cuda.reset_peak_memory_stats()
    models = [_model(large_shape, torch), _model(small_shape, torch), _model(small_shape, torch)]
    n_shared = min(large_shape.n_vocab, small_shape.n_vocab)
    gen = torch.Generator().manual_seed(0)
    prompt = torch.randint(1000, n_shared - 1000, (1, setup.n_prompt), generator=gen).cuda()

    @torch.inference_mode()
    def run(prompt, n_gen):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        outs = [m(prompt, use_cache=True) for m in models]
        caches = [o.past_key_values for o in outs]
        z = [o.logits[:, -1, :n_shared].float() for o in outs]
        token = (z[0] + setup.alpha * (z[1] - z[2])).argmax(-1, keepdim=True)
        torch.cuda.synchronize()
        t1 = time.perf_counter()
        for _ in range(n_gen - 1):
            outs = [m(token, past_key_values=c, use_cache=True) for m, c in zip(models, caches)]
            caches = [o.past_key_values for o in outs]
            z = [o.logits[:, -1, :n_shared].float() for o in outs]
            token = (z[0] + setup.alpha * (z[1] - z[2])).argmax(-1, keepdim=True)
        torch.cuda.synchronize()
        t2 = time.perf_counter()
        return prompt.shape[1] / (t1 - t0), (n_gen - 1) / (t2 - t1)

    run(prompt[:, :32], 8)  # warm-up
    runs = [run(prompt, setup.n_gen) for _ in range(setup.n_repeat)]
    gpu_mib = round(torch.cuda.max_memory_reserved() / 2**20)
    del models
    torch.cuda.empty_cache()
    return {"mode": "transformers", "pp_tps": round(max(r[0] for r in runs), 1),
            "tg_tps": round(max(r[1] for r in runs), 1), "tg_tps_runs": [round(r[1], 1) for r in runs],
            "gpu_mib": gpu_mib, "host_mib": None, "transformers": transformers.__version__,
            "torch": torch.__version__}
