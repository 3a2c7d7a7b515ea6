"""An independent reference for RAST: each model run alone through llama-cpp-python's own `Llama`
class, the three logit vectors combined in numpy. Nothing here imports the engine."""

import llama_cpp

import os

import numpy as np

from gguf import GGUFReader

TOKEN_TYPE_UNUSED = 5
# RAST_TEST_NGL=99 runs the oracle tests with every layer offloaded (on a GPU build).
N_GPU_LAYERS = int(os.environ.get("RAST_TEST_NGL", "0"))
# Several rows in one decode (sequences of a batch, a speculative verify batch) go through CUDA's
# batched GEMMs (TF32 for these f32 models); the oracle decodes one row at a time. Measured on an
# H200 with the test models: up to 0.09 (4 sequences) and 0.21 (verify batches) in log-probabilities,
# where a CPU agrees within the tests' own tolerances. Only tests of batched rows use this, on a GPU.
GPU_BATCH_TOLERANCE = 0.3


class AloneModel:
    """One model in its own llama-cpp-python Llama, fed token by token like the engine."""

    def __init__(self, path, n_ctx=256, flash_attn=False):
        # logits of the last position only, as the engine asks: with logits_all the output matrix runs
        # as a batched GEMM over the whole prompt, which on CUDA is TF32 (~1e-2 off in logprobs)
        self.llm = llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_batch=512, logits_all=False,
                                   n_threads=2, flash_attn=flash_attn,
                                   n_gpu_layers=N_GPU_LAYERS, verbose=False)

    def start(self, prompt_tokens):
        self.llm.reset()
        self.llm.eval(prompt_tokens)
        return self.last_logits()

    def step(self, token):
        self.llm.eval([token])
        return self.last_logits()

    def last_logits(self):
        row = llama_cpp.llama_get_logits_ith(self.llm._ctx.ctx, -1)
        return np.ctypeslib.as_array(row, shape=(self.llm.n_vocab(),)).astype(np.float64)

    def close(self):
        self.llm.close()


def unused_ids(path) -> np.ndarray:
    reader = GGUFReader(str(path))
    field = reader.fields["tokenizer.ggml.token_type"]
    types = np.array([field.parts[i][0] for i in field.data])
    return np.nonzero(types == TOKEN_TYPE_UNUSED)[0]


def combine(z_large, pairs, n_shared, excluded):
    """z_M + sum alpha (z_tuned - z_base) over the shared range; -inf elsewhere and on padding."""
    z = np.full(z_large.shape, -np.inf)
    z[:n_shared] = z_large[:n_shared]
    for alpha, z_tuned, z_base in pairs:
        z[:n_shared] += alpha * (z_tuned[:n_shared] - z_base[:n_shared])
    z[excluded] = -np.inf
    return z


def log_softmax(z):
    z = np.asarray(z, dtype=np.float64)
    m = np.max(z[np.isfinite(z)])
    out = z - m
    finite = np.isfinite(out)
    out[finite] -= np.log(np.sum(np.exp(out[finite])))
    return out
