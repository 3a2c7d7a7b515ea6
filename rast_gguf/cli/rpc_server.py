"""`rast rpc-server`: llama.cpp's RPC server, from this installation's libggml-rpc, for --rpc clients."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from rast_gguf.cli import options as o
from rast_gguf.rpc import DEFAULT_PORT


def rpc_server_command(
    host: Annotated[str, typer.Option("-H", "--host", help="IPv4 address to listen on. Anything but 127.0.0.1 exposes "
                                      "this machine's devices, unauthenticated and unencrypted, to whoever reaches "
                                      "that address: use a private network interface only.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("-p", "--port", help="TCP port to listen on.")] = DEFAULT_PORT,
    device: Annotated[Optional[str], typer.Option(
        "-d", "--device", metavar="DEV1,DEV2", show_default=False,
        help="Devices to serve, by llama.cpp name (rast doctor lists them). [default: every GPU, else the CPU]")] = None,
    threads: Annotated[Optional[int], typer.Option(
        "-t", "--threads", show_default=False, help="Threads of the CPU device. [default: half the cores]")] = None,
    cache: Annotated[bool, typer.Option("-c", "--cache", help="Keep received tensors in a local file cache "
                                        "(LLAMA_CACHE or ~/.cache/llama.cpp/rpc), so a reload sends only hashes.")] = False,
    verbose: o.Verbose = False,
):
    """Serve this machine's devices to rast (or llama.cpp) clients on other machines: --rpc HOST:PORT.

    Example, on the machine with the spare GPU: rast rpc-server --host 10.0.0.5 --port 50052;
    then on the client: rast generate --rpc 10.0.0.5:50052 -ngl 99 -m large.gguf ...
    """
    from rast_gguf import _llama, rpc

    _llama.set_verbose(verbose)
    if not 0 < port < 65536:
        from rast_gguf.errors import UsageError

        raise UsageError(f"--port must be in 1..65535, got {port}")
    rpc.ggml().rpc_reg()  # a clear error if this build has no RPC backend
    devices = rpc.server_devices([d for d in (device or "").replace("/", ",").split(",") if d.strip()])
    cache_dir = None
    if cache:
        root = os.environ.get("LLAMA_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME") or
                                                             Path.home() / ".cache", "llama.cpp")
        cache_dir = str(Path(root) / "rpc")
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
    n_threads = threads or max(1, (os.cpu_count() or 2) // 2)
    if not rpc.is_loopback(host):
        print(f"warning: listening on {host}: anyone who can reach it can use this machine's devices and read the "
              "tensors sent (no authentication, no encryption); keep it on a private network", file=sys.stderr)
    version = ".".join(map(str, rpc.protocol_version()))
    print(f"rast rpc-server on {host}:{port}, RPC protocol {version}, serving: "
          + "; ".join(rpc.describe_device(d) for d in devices), file=sys.stderr)
    sys.stderr.flush()
    rpc.serve(host, port, devices, n_threads=n_threads, cache_dir=cache_dir)
