"""Memory: an estimate of what a model needs on the GPU before it is loaded, and readings of use.

`estimate(path, n_gpu_layers, n_ctx, n_batch)` sizes one model's GPU share from its GGUF header:
the weights of the offloaded layers (llama.cpp offloads the last n; more than n_layer also moves the
output matrix), their f16 KV cache for n_ctx cells, and a compute buffer (logits and activations
of one n_batch ubatch, plus attention scores). `check_fits` adds the models up (plus a CUDA context)
and raises OutOfMemoryError with the estimate when that exceeds the GPU's free memory; with no way
to read free memory (no NVIDIA driver, or a CPU-only run) it checks nothing. Readings: device
memory in use (NVML, whole device) and the process's peak resident memory (VmHWM, resettable).
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import re
from collections.abc import Sequence

from rast_gguf.errors import OutOfMemoryError
from rast_gguf.gguf_file import GGUFInfo, read_gguf_info

GIB = 2**30
CUDA_CONTEXT_BYTES = 600 * 2**20  # driver context + cuBLAS workspace, once per process
_LAYER = re.compile(r"^blk\.(\d+)\.")


@dataclasses.dataclass
class Estimate:
    name: str
    weights: int
    kv: int
    compute: int

    @property
    def total(self) -> int:
        return self.weights + self.kv + self.compute

    def describe(self) -> str:
        return (f"{self.name} {self.total / GIB:.1f} GiB (weights {self.weights / GIB:.1f} + KV {self.kv / GIB:.2f}"
                f" + compute {self.compute / GIB:.2f})")


def estimate(path, n_gpu_layers: int, n_ctx: int, n_batch: int = 512) -> Estimate:
    """`path`: a GGUF file, or its GGUFInfo when the caller has parsed it already."""
    info = path if isinstance(path, GGUFInfo) else read_gguf_info(path)
    meta, arch = info.metadata, info.architecture
    n_layer = int(meta[f"{arch}.block_count"])
    n_embd = int(meta[f"{arch}.embedding_length"])
    # head counts and feed-forward sizes may be per-layer arrays (one value per layer)
    heads = _per_layer(meta[f"{arch}.attention.head_count"], n_layer)
    heads_kv = _per_layer(meta.get(f"{arch}.attention.head_count_kv", heads), n_layer)
    n_ff = max(_per_layer(meta.get(f"{arch}.feed_forward_length", 4 * n_embd), n_layer))
    n_head = max(heads)
    head_dim_k = int(meta.get(f"{arch}.attention.key_length") or (n_embd // heads[0] if heads[0] else 0))
    head_dim_v = int(meta.get(f"{arch}.attention.value_length") or head_dim_k)
    n_vocab = next((t.shape[0] for t in info.tensors if t.name == "token_embd.weight"), 0)
    n_gpu = n_layer + 1 if n_gpu_layers < 0 else min(n_gpu_layers, n_layer + 1)
    if n_gpu == 0:
        return Estimate(info.path.name, 0, 0, 0)
    first_gpu_layer = n_layer - min(n_gpu, n_layer)
    weights = 0
    for t in info.tensors:
        m = _LAYER.match(t.name)
        if m:
            weights += t.n_bytes if int(m.group(1)) >= first_gpu_layer else 0
        elif n_gpu > n_layer and t.name in ("output.weight", "output_norm.weight"):
            weights += t.n_bytes
    if n_gpu > n_layer and info.tensor("output.weight") is None:  # tied embeddings: the output matrix is token_embd
        weights += info.tensor("token_embd.weight").n_bytes
    n_cells = -(-n_ctx // 256) * 256
    kv_per_cell = sum(n_kv * (head_dim_k + head_dim_v) for n_kv in heads_kv[first_gpu_layer:]) * 2  # f16 K and V
    kv = n_cells * kv_per_cell
    ubatch = min(n_batch, 512)
    compute = 4 * ubatch * (n_vocab + 3 * n_ff + 6 * n_embd) + 4 * ubatch * n_cells * n_head + 64 * 2**20
    return Estimate(info.path.name, weights, kv, compute)


def _per_layer(value, n_layer: int) -> list[int]:
    """A hyperparameter that is one integer or one per layer, as a list of n_layer integers."""
    if isinstance(value, (list, tuple)):
        return [int(v) for v in value] if value else [0] * n_layer
    return [int(value)] * n_layer


def check_fits(models: Sequence[tuple[object, int]], *, n_ctx: int, n_batch: int = 512,
               free_bytes: int | None = None, remote_free_bytes: int | None = None) -> list[Estimate]:
    """Raise OutOfMemoryError if (path, n_gpu_layers) models will not fit in free GPU memory, the
    free memory of the RPC servers' devices (`remote_free_bytes`, rast_gguf.rpc) counted in."""
    estimates = [estimate(path, ngl, n_ctx, n_batch) for path, ngl in models]
    if not any(e.total for e in estimates):
        return estimates
    if free_bytes is None and not gpu_offload_supported():
        return estimates  # this llama.cpp build keeps every layer on the CPU whatever -ngl says
    free = gpu_free_bytes() if free_bytes is None else free_bytes
    need = sum(e.total for e in estimates) + (CUDA_CONTEXT_BYTES if free is not None else 0)
    where = "GPU memory"
    if remote_free_bytes is not None:  # offloaded layers also go to the RPC servers' devices
        free = (free or 0) + remote_free_bytes
        where = "memory on the GPUs and RPC servers"
    if free is not None and need > free:
        raise OutOfMemoryError(
            f"the models need about {need / GIB:.1f} GiB of {where} but {free / GIB:.1f} GiB is free: "
            + "; ".join(e.describe() for e in estimates if e.total)
            + "; put fewer layers on the GPU (-ngl, or -ngls 0 for the small pair on the CPU) or use a smaller -c")
    return estimates


def gpu_offload_supported() -> bool:
    """Whether layers can go to a local GPU (llama_supports_gpu_offload is also true for the RPC backend)."""
    from rast_gguf._llama import C
    from rast_gguf.doctor import gpu_devices

    return bool(C.llama_supports_gpu_offload()) and bool(gpu_devices())


# --- readings -----------------------------------------------------------------------------------

class _NvmlMemory(ctypes.Structure):
    _fields_ = [("total", ctypes.c_ulonglong), ("free", ctypes.c_ulonglong), ("used", ctypes.c_ulonglong)]


def _nvml_memory(device_index: int = 0) -> _NvmlMemory | None:
    try:
        nvml = ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return None
    if nvml.nvmlInit_v2() != 0:
        return None
    try:
        handle = ctypes.c_void_p()
        mem = _NvmlMemory()
        if nvml.nvmlDeviceGetHandleByIndex_v2(device_index, ctypes.byref(handle)) != 0:
            return None
        if nvml.nvmlDeviceGetMemoryInfo(handle, ctypes.byref(mem)) != 0:
            return None
        return mem
    finally:
        nvml.nvmlShutdown()


def gpu_free_bytes() -> int | None:
    """Free memory of the first GPU llama.cpp sees (else NVML's device 0); None if unknown."""
    if os.environ.get("RAST_GPU_FREE_BYTES"):  # for machines whose driver hides NVML
        return int(os.environ["RAST_GPU_FREE_BYTES"])
    from rast_gguf.doctor import gpu_devices

    gpus = gpu_devices()  # ggml's own view: CUDA, Metal, ...
    if gpus and gpus[0]["total_bytes"]:
        return gpus[0]["free_bytes"]
    mem = _nvml_memory()
    return None if mem is None else mem.free


def gpu_used_bytes() -> int | None:
    mem = _nvml_memory()
    return None if mem is None else mem.used


def reset_peak_rss() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_rss_bytes() -> int | None:
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None
