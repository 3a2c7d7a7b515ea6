"""Run `rast serve`: bind, load the models on the decode thread, serve HTTP until a signal.

`run_server(load_engine, config, host=..., port=...)` binds the socket first (a port in use is a
one-line UsageError, and port 0 picks a free one), starts the `Backend` (the models load while
/health answers 503), prints one line with the URL once they are loaded, and serves with uvicorn
until SIGINT or SIGTERM. Then it stops accepting connections, lets requests in flight finish for
`grace_s` seconds, cancels the rest (their answers end with a "shutting down" error object and
their slots are freed at the next step), stops the decode thread, frees the engine and returns
normally, so the process exits 0. A second Ctrl-C skips the grace period. A load that fails stops the server and is raised as the loader's error.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sys
import threading
from collections.abc import Callable

import uvicorn

from rast_gguf.errors import UsageError
from rast_gguf.serve.app import RastServer, ServeConfig
from rast_gguf.serve.backend import Backend

GRACE_S = 3.0


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=2048)
    except OSError as e:
        raise UsageError(f"cannot listen on {host}:{port}: {e.strerror or e}; choose another --port or --host") \
            from None


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def run_server(load_engine: Callable[[], object], config: ServeConfig, *, host: str = "127.0.0.1",
               port: int = 8080, max_queue: int = 0, grace_s: float = GRACE_S, verbose: bool = False,
               describe: Callable[[object], str] = lambda engine: "") -> None:
    sock = bind(host, port)
    url = url_of(sock)
    server: _Server | None = None

    def on_ready(backend: Backend) -> None:
        print(f"rast serve: listening on {url} (model '{config.model_name}'{describe(backend.engine)}); "
              f"OpenAI base URL {url}/v1; Ctrl-C stops", flush=True)

    def on_failed(error: BaseException) -> None:
        if server is not None:
            server.should_exit = True

    backend = Backend(load_engine, max_queue=max_queue, on_ready=on_ready, on_failed=on_failed)
    rast = RastServer(backend, config)
    uv_config = uvicorn.Config(rast.app, log_level="info" if verbose else "warning", access_log=verbose,
                               timeout_graceful_shutdown=2.0, lifespan="off", loop="asyncio")
    server = _Server(uv_config, rast, grace_s)
    print(f"rast serve: loading the models; {url}/health answers 503 until they are ready", file=sys.stderr,
          flush=True)
    backend.start()
    try:
        server.run(sockets=[sock])
    finally:
        backend.stop()
        sock.close()
    if backend.error is not None:
        raise backend.error
    print("rast serve: stopped", file=sys.stderr, flush=True)


class _Server(uvicorn.Server):
    """uvicorn's Server with our shutdown: stop accepting, drain the requests in flight (`RastServer.drain`)
    and stop the decode thread while the event loop still runs; and signal handling that ends in a
    normal return (uvicorn re-raises the signal after its shutdown, so SIGTERM would exit with 143)."""

    def __init__(self, config, rast: RastServer, grace_s: float):
        super().__init__(config)
        self.rast, self.grace_s = rast, grace_s

    async def shutdown(self, sockets=None) -> None:
        for server in getattr(self, "servers", []):
            server.close()
        for sock in sockets or []:
            sock.close()
        await self.rast.drain(self.grace_s, lambda: self.force_exit)
        await super().shutdown()
        await asyncio.get_running_loop().run_in_executor(None, self.rast.backend.stop)

    @contextlib.contextmanager
    def capture_signals(self):
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
