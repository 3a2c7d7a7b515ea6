"""What this installation runs on: the llama.cpp build and its backend devices, for `rast doctor`.

`backend_devices()` lists ggml's backend devices (CUDA0, Metal, CPU, ...) with their free/total
memory, read through libggml's own device API so it answers for CUDA, Metal and CPU builds alike.
`report()` gathers that with the versions, the CPU features llama.cpp was built for, whether GPU
offload is possible, and which libstdc++ copy C++ symbols resolve to (rast_gguf/_preload.py).
"""

from __future__ import annotations

import importlib.metadata
import os
import sys
from pathlib import Path

from rast_gguf import _preload
from rast_gguf._llama import C

def backend_devices() -> list[dict]:
    from rast_gguf.rpc import DEVICE_TYPES, ggml

    g = ggml()
    devices = []
    for i in range(g.ggml_backend_dev_count()):
        dev = g.ggml_backend_dev_get(i)
        free, total = g.memory(dev)
        devices.append({"name": g.ggml_backend_dev_name(dev).decode(),
                        "description": g.ggml_backend_dev_description(dev).decode(),
                        "type": DEVICE_TYPES.get(g.ggml_backend_dev_type(dev), "?"),
                        "free_bytes": free, "total_bytes": total})
    return devices


def gpu_devices() -> list[dict]:
    return [d for d in backend_devices() if d["type"] in ("GPU", "integrated GPU")]


def rpc_report(endpoints: list[str]) -> list[dict]:
    """Per RPC server: its protocol version, the handshake's round trip and its devices' memory, or why not."""
    from rast_gguf import rpc
    from rast_gguf.errors import RpcError

    servers = []
    for endpoint in endpoints:
        entry: dict = {"endpoint": endpoint}
        try:
            version, seconds = rpc.hello(endpoint)
            entry.update(version=".".join(map(str, version)), handshake_ms=round(seconds * 1e3, 2))
            rpc.check_version(endpoint, version)
            entry["devices"] = [{"name": d.name, "free_bytes": d.free_bytes, "total_bytes": d.total_bytes}
                                for d in rpc.connect([endpoint])]
        except RpcError as e:
            entry["error"] = str(e)
        servers.append(entry)
    return servers


def rpc_backend_info() -> str:
    from rast_gguf import rpc

    if not rpc.supported():
        return ""
    return ".".join(map(str, rpc.protocol_version()))


def report(rpc_endpoints: list[str] | None = None) -> dict:
    import llama_cpp

    from rast_gguf.memory import gpu_offload_supported

    return {
        "rast_gguf": importlib.metadata.version("rast-gguf"),
        "llama_cpp_python": importlib.metadata.version("llama-cpp-python"),
        "python": sys.version.split()[0],
        "libllama": str(Path(llama_cpp.__file__).parent / "lib"),
        "gpu_offload": gpu_offload_supported() or bool(C.llama_supports_gpu_offload()) and not rpc_backend_info(),
        "devices": backend_devices(),
        "rpc_protocol": rpc_backend_info(),
        "rpc_servers": rpc_report(rpc_endpoints) if rpc_endpoints else [],
        "system_info": C.llama_print_system_info().decode().strip(" |"),
        "libstdcxx": _preload.runtime_report(C._lib) if sys.platform.startswith("linux") else {},
        "env": {k: os.environ[k] for k in ("CUDA_VISIBLE_DEVICES", "GGML_CUDA_DISABLE_GRAPHS") if k in os.environ},
    }


def format_report(info: dict) -> str:
    lines = [f"rast-gguf {info['rast_gguf']}, llama-cpp-python {info['llama_cpp_python']}, Python {info['python']}",
             f"libllama: {info['libllama']}",
             f"GPU offload: {'yes' if info['gpu_offload'] else 'no (CPU-only build: see README, Building with a GPU)'}"]
    for d in info["devices"]:
        mem = f", {d['free_bytes'] / 2**30:.1f} of {d['total_bytes'] / 2**30:.1f} GiB free" if d["total_bytes"] else ""
        lines.append(f"device {d['name']} ({d['type']}): {d['description']}{mem}")
    gpus = [d["name"] for d in info["devices"] if d["type"] != "CPU"]
    lines.append(f"active backend: {', '.join(gpus) + ' (layers offloaded with -ngl/-ngls)' if gpus else 'CPU'}")
    lines.append(f"RPC backend: protocol {info['rpc_protocol']} (--rpc HOST:PORT; rast rpc-server)" if info["rpc_protocol"]
                 else "RPC backend: not built in (rebuild with bash scripts/setup.sh for --rpc)")
    for server in info["rpc_servers"]:
        if "error" in server:
            lines.append(f"rpc {server['endpoint']}: UNUSABLE: {server['error']}")
            continue
        devices = ", ".join(f"{d['name']} {d['free_bytes'] / 2**30:.1f} of {d['total_bytes'] / 2**30:.1f} GiB free"
                            for d in server["devices"])
        lines.append(f"rpc {server['endpoint']}: protocol {server['version']}, handshake {server['handshake_ms']:.1f} ms;"
                     f" {devices}")
    lines.append(f"CPU features: {info['system_info']}")
    std = info["libstdcxx"]
    if std:
        private = std.get("first_in_libllama_tree", "")
        private = "" if private == std.get("global") else f"; this build also carries a private copy in {Path(private).name}"
        lines.append(f"libstdc++ (global scope): {std.get('global') or 'none: import rast_gguf before llama_cpp'}{private}")
    for k, v in info["env"].items():
        lines.append(f"{k}={v}")
    return "\n".join(lines)
