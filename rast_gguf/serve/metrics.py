"""/metrics of `rast serve`: Prometheus text exposition (version 0.0.4), written by hand.

`ServerMetrics` counts what the HTTP side sees (requests by endpoint and status, requests
rejected because the queue was full, requests cancelled by a client that went away, requests in
flight); `render(stats)` adds the scheduler's own books (`SchedulerStats`: slots, queue, prompt
tokens requested and decoded, tokens generated, steps, slot occupancy, and how often RAST changed
the large model's choice) and a tokens/s gauge measured between two scrapes. Every name starts
with `rast_`; counters end in `_total`.
"""

from __future__ import annotations

import threading
import time
from collections import Counter


def _line(name: str, kind: str, help_text: str, samples: list[tuple[dict, float]]) -> str:
    out = [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
    for labels, value in samples:
        label_text = ",".join(f'{k}="{v}"' for k, v in labels.items())
        out.append(f"{name}{{{label_text}}} {value:g}" if label_text else f"{name} {value:g}")
    return "\n".join(out)


class ServerMetrics:
    def __init__(self):
        self._lock = threading.Lock()
        self.requests: Counter[tuple[str, int]] = Counter()  # (endpoint, status) -> count
        self.rejected_queue_full = 0
        self.cancelled_by_client = 0
        self.in_flight = 0
        self.started = time.monotonic()
        self._last_scrape = (self.started, 0)

    def count(self, endpoint: str, status: int) -> None:
        with self._lock:
            self.requests[(endpoint, status)] += 1

    def render(self, stats, *, model: str, loading: bool) -> str:
        now = time.monotonic()
        blocks = [
            _line("rast_up", "gauge", "1 when the models are loaded and requests are served, 0 while loading.",
                  [({"model": model}, 0.0 if loading else 1.0)]),
            _line("rast_requests_total", "counter", "HTTP requests to the generation endpoints, by status.",
                  [({"endpoint": e, "status": str(s)}, n) for (e, s), n in sorted(self.requests.items())]),
            _line("rast_requests_rejected_total", "counter", "Requests refused with 503 because the queue was full.",
                  [({}, self.rejected_queue_full)]),
            _line("rast_requests_cancelled_total", "counter",
                  "Requests whose client disconnected before the answer was complete.",
                  [({}, self.cancelled_by_client)]),
            _line("rast_requests_in_flight", "gauge", "Generation requests being answered now.",
                  [({}, self.in_flight)]),
        ]
        if stats is not None:
            with self._lock:
                t0, tokens0 = self._last_scrape
                self._last_scrape = (now, stats.tokens_generated)
            rate = (stats.tokens_generated - tokens0) / max(now - t0, 1e-9)
            changed_rate = stats.changed_tokens / stats.tokens_generated if stats.tokens_generated else 0.0
            blocks += [
                _line("rast_slots_total", "gauge", "Sequence slots (-np).", [({}, stats.n_slots)]),
                _line("rast_slots_busy", "gauge", "Slots holding a sequence now.", [({}, stats.slots_busy)]),
                _line("rast_queue_length", "gauge", "Sequences waiting for a slot.", [({}, stats.queue_len)]),
                _line("rast_prompt_tokens_total", "counter", "Prompt tokens of admitted sequences.",
                      [({}, stats.prompt_tokens_requested)]),
                _line("rast_prompt_tokens_decoded_total", "counter",
                      "Prompt tokens actually decoded (shared and cached prefixes are not).",
                      [({}, stats.prompt_tokens_decoded)]),
                _line("rast_tokens_generated_total", "counter", "Generated tokens.", [({}, stats.tokens_generated)]),
                _line("rast_tokens_per_second", "gauge",
                      "Generated tokens per second since the previous scrape (since start for the first).",
                      [({}, rate)]),
                _line("rast_decode_steps_total", "counter", "Scheduler steps (one llama_decode per context each).",
                      [({}, stats.steps)]),
                _line("rast_slot_occupancy", "gauge", "Busy slot-steps / total slot-steps since start.",
                      [({}, stats.occupancy)]),
                _line("rast_changed_tokens_total", "counter",
                      "Generated tokens where RAST chose another token than the large model's own argmax.",
                      [({}, stats.changed_tokens)]),
                _line("rast_changed_token_rate", "gauge",
                      "rast_changed_tokens_total / rast_tokens_generated_total.", [({}, changed_rate)]),
            ]
        return "\n".join(blocks) + "\n"
