"""The server's decode thread: it loads the engine, then runs the scheduler's loop until stopped.

`Backend(load_engine, max_queue=...)` starts nothing until `start()`; the thread then builds the
engine (`load_engine()`, which may take minutes for large models while the HTTP side already
answers /health with 503), wraps it in a `Scheduler`, calls `on_ready`, and runs
`Scheduler.serve` until `stop()`; the engine is closed on that same thread when the loop ends, so
one thread owns every llama.cpp handle from birth to free. A load that fails leaves `error` set and
calls `on_failed`. Requests reach the scheduler from other threads through its thread-safe
`submit`/`cancel`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

LOADING, READY, FAILED, STOPPED = "loading", "ready", "failed", "stopped"


class Backend:
    def __init__(self, load_engine: Callable[[], object], *, max_queue: int = 0,
                 on_ready: Callable[["Backend"], None] | None = None,
                 on_failed: Callable[[BaseException], None] | None = None):
        self._load_engine = load_engine
        self.max_queue = max_queue
        self._on_ready, self._on_failed = on_ready, on_failed
        self.state = LOADING
        self.error: BaseException | None = None
        self.engine = None
        self.scheduler = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rast-decode")

    @property
    def ready(self) -> bool:
        return self.state == READY

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Stop the loop after its current step and free the engine (idempotent)."""
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def _run(self) -> None:
        from rast_gguf.scheduler import Scheduler

        try:
            self.engine = self._load_engine()
            self.scheduler = Scheduler(self.engine, max_queue=self.max_queue)
        except BaseException as e:  # noqa: BLE001  (reported by the caller as one line)
            self.state, self.error = FAILED, e
            if self.engine is not None:
                self.engine.close()
                self.engine = None
            if self._on_failed is not None:
                self._on_failed(e)
            return
        try:
            if not self._stop.is_set():
                self.state = READY
                if self._on_ready is not None:
                    self._on_ready(self)
                self.scheduler.serve(self._stop)
        finally:
            self.state = STOPPED
            self.engine.close()
