"""RAST with the large model over llama.cpp's RPC backend vs all local, side by side in one run, and
what each generated token costs on the wire (round trips and bytes), so a real network can be judged.

Starts `rast rpc-server` processes on 127.0.0.1 itself (CPU backend), builds the CPU benchmarks'
synthetic triple (Qwen2.5 vocabulary), then alternates runs of each placement and prints medians:

- local: every model on this machine's CPU;
- 1 server: the large model's layers (-ngl) on one server, the small pair local;
- 2 servers: the large model's layers split 1:1 over two servers.

Then each placement once more through a counting TCP relay between client and server: the
requests the client waited on per token (a round trip each: a real network adds its RTT to every
one) and the bytes each way per token. Wire time per token ~ round trips x RTT + bytes / bandwidth.

    python benchmarks/bench_rpc.py                 # -ngl 99: every layer and the output matrix remote
    python benchmarks/bench_rpc.py --ngl 4         # llama.cpp offloads the output matrix first, then
                                                   # the last layers: the logits still come back
"""

from __future__ import annotations

import llama_cpp  # noqa: F401

import argparse
import json
import select
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from rast_gguf import DeltaPair, RastEngine, SamplingParams, rpc, stream_generate

from cpu_models import add_model_args, model_triple

RAST = Path(sys.executable).parent / "rast"
PROMPT = "Question: A train travels 120 km in 2 hours. What is its average speed?\nAnswer:"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(threads: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([str(RAST), "rpc-server", "--port", str(port), "-t", str(threads)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"127.0.0.1:{port}"
    for _ in range(600):
        try:
            rpc.hello(endpoint, timeout=1.0)
            return proc, endpoint
        except rpc.RpcError:
            time.sleep(0.1)
    raise SystemExit(f"rast rpc-server on {endpoint} did not start")


class CountingRelay:
    """A TCP relay client <-> server that counts turns (client sends, then waits for the server's
    answer: one round trip) and the bytes each way."""

    def __init__(self, target: str):
        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(4)
        self.endpoint = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.round_trips = self.up = self.down = 0
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def reset(self) -> None:
        with self._lock:
            self.round_trips = self.up = self.down = 0

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            for s in (client, server):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()

    def _pump(self, client: socket.socket, server: socket.socket) -> None:
        last = None  # who spoke last: a server answer after the client spoke ends a round trip
        while True:
            ready, _, _ = select.select([client, server], [], [])
            for s in ready:
                data = s.recv(1 << 20)
                if not data:
                    client.close()
                    server.close()
                    return
                (server if s is client else client).sendall(data)
                with self._lock:
                    if s is client:
                        self.up += len(data)
                        last = "client"
                    else:
                        self.down += len(data)
                        if last == "client":
                            self.round_trips += 1
                        last = "server"


def decode_tps(engine: RastEngine, n_tokens: int) -> float:
    last = None
    for last in stream_generate(engine, PROMPT, max_tokens=n_tokens, ignore_eos=True,
                                sampling=SamplingParams(temp=0.8, seed=1)):
        pass
    assert last.generation_tokens == n_tokens
    return last.generation_tps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_args(ap)
    ap.add_argument("-n", "--n-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ngl", type=int, default=99, help="large-model layers on the servers (99: all + output)")
    ap.add_argument("-t", "--threads", type=int, default=1, help="threads of the client's and each server's CPU")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()

    large, base, tuned, large_label, small_label = model_triple(args)
    pairs = [DeltaPair(str(tuned), str(base), 1.0)]
    servers = [start_server(args.threads), start_server(args.threads)]
    endpoints = [e for _, e in servers]
    placements = {"local": {}, "1 server": {"rpc": endpoints[:1], "n_gpu_layers": args.ngl},
                  "2 servers": {"rpc": endpoints, "n_gpu_layers": args.ngl, "tensor_split": [1, 1]}}
    common = dict(n_ctx=512, n_threads=args.threads)
    try:
        speeds: dict[str, list[float]] = {name: [] for name in placements}
        for _ in range(args.repeats):  # one engine at a time: an rpc-server serves one client
            for name, placement in placements.items():
                with RastEngine(large, pairs, **common, **placement) as engine:
                    decode_tps(engine, 4)  # warm-up
                    speeds[name].append(decode_tps(engine, args.n_tokens))

        wire = {}
        for name, placement in placements.items():
            if not placement:
                continue
            relays = [CountingRelay(e) for e in placement["rpc"]]
            relayed = {**placement, "rpc": [r.endpoint for r in relays]}
            with RastEngine(large, pairs, **common, **relayed) as engine:
                decode_tps(engine, 4)
                for r in relays:
                    r.reset()
                decode_tps(engine, args.n_tokens)
            wire[name] = {"round_trips_per_token": sum(r.round_trips for r in relays) / args.n_tokens,
                          "bytes_up_per_token": sum(r.up for r in relays) / args.n_tokens,
                          "bytes_down_per_token": sum(r.down for r in relays) / args.n_tokens}
    finally:
        for proc, _ in servers:
            proc.kill()
            proc.wait()

    local = statistics.median(speeds["local"])
    print(f"large: {large_label}; small pair: {small_label}; {args.n_tokens} tokens, {args.repeats} repeats, "
          f"-t {args.threads}, -ngl {args.ngl} on the servers\n")
    print("| placement | RAST tokens/s (median) | vs local | round trips / token | KiB up / token | KiB down / token |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name in placements:
        tps = statistics.median(speeds[name])
        w = wire.get(name)
        cells = (f"{w['round_trips_per_token']:.1f} | {w['bytes_up_per_token'] / 1024:.1f} | "
                 f"{w['bytes_down_per_token'] / 1024:.1f}") if w else "- | - | -"
        print(f"| {name} | {tps:.1f} | {tps / local:.2f} x | {cells} |")
    for name, w in wire.items():
        added_ms = 1e3 / statistics.median(speeds[name]) - 1e3 / local
        print(f"\n{name}: {added_ms:.2f} ms more per token than local over loopback; on a network with RTT r and "
              f"bandwidth B each token adds about {w['round_trips_per_token']:.1f} x r + "
              f"{(w['bytes_up_per_token'] + w['bytes_down_per_token']) / 1024:.0f} KiB / B")
    if args.json:
        Path(args.json).write_text(json.dumps({"speeds": speeds, "wire": wire, "args": vars(args)}, indent=2))


if __name__ == "__main__":
    main()
