"""Load test for `rast serve`: N concurrent streaming chat clients for T seconds.

Each client sends one streaming /v1/chat/completions request after another (a toy sum question,
stream_options.include_usage) until the time is up; requests started before then run to the end.
Printed: requests done and failed, 5xx responses, aggregate generated tokens/s (usage tokens of
all finished requests / wall time), time to first content token p50/p99, and the server's RSS
before the load (after a warm-up of one request per client, all at once) and after it. The clients are a small hand-written
asyncio HTTP/1.1 reader (chunked SSE), so 64 streams cost the client side little CPU.

Start the server yourself and point at it (--url, --pid for RSS), or let the script start one:
everything after `--` is passed to `rast serve` (it gets --port 0 and the URL from its startup line):

    .venv/bin/python benchmarks/load_serve.py --clients 64 --duration 60 -- -np 16 -c 512
    .venv/bin/python benchmarks/load_serve.py --url http://127.0.0.1:8080 --pid 12345 --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import subprocess
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

RAST = [sys.executable, "-m", "rast_gguf.cli.app"]  # `rast`, with this interpreter (venv or PYTHONPATH)


@dataclass
class Result:
    status: int = 0
    ttft: float | None = None
    tokens: int = 0
    complete: bool = False  # saw data: [DONE]
    error: str | None = None


@dataclass
class Totals:
    results: list[Result] = field(default_factory=list)


async def _read_chunked(reader: asyncio.StreamReader):
    """The bodies of a chunked HTTP/1.1 response, chunk by chunk."""
    while True:
        size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
        if size == 0:
            await reader.readline()
            return
        data = await reader.readexactly(size)
        await reader.readexactly(2)
        yield data


async def one_request(host: str, port: int, path: str, body: dict, api_key: str | None) -> Result:
    result = Result()
    payload = json.dumps(body).encode()
    headers = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", "Content-Type: application/json",
               f"Content-Length: {len(payload)}", "Accept: text/event-stream", "Connection: close"]
    if api_key:
        headers.append(f"Authorization: Bearer {api_key}")
    t0 = time.perf_counter()
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError as e:
        result.error = f"connect: {e}"
        return result
    try:
        writer.write(("\r\n".join(headers) + "\r\n\r\n").encode() + payload)
        await writer.drain()
        status_line = await reader.readline()
        result.status = int(status_line.split()[1])
        chunked = False
        while (line := await reader.readline()) not in (b"\r\n", b""):
            if line.lower().startswith(b"transfer-encoding:") and b"chunked" in line.lower():
                chunked = True
        if result.status != 200:
            result.error = (await reader.read(500)).decode(errors="replace")
            return result
        buffer = b""
        chunks = _read_chunked(reader) if chunked else _read_all(reader)
        async for data in chunks:
            buffer += data
            while b"\n\n" in buffer:
                event, buffer = buffer.split(b"\n\n", 1)
                if not event.startswith(b"data: "):
                    continue
                data = event[6:]
                if data == b"[DONE]":
                    result.complete = True
                    continue
                obj = json.loads(data)
                if "error" in obj:
                    result.error = obj["error"].get("message")
                    continue
                if obj.get("usage"):
                    result.tokens = obj["usage"]["completion_tokens"]
                for choice in obj.get("choices", []):
                    if result.ttft is None and choice.get("delta", {}).get("content"):
                        result.ttft = time.perf_counter() - t0
    except (OSError, asyncio.IncompleteReadError, ValueError) as e:
        result.error = f"{type(e).__name__}: {e}"
    finally:
        writer.close()
    if not result.complete and result.error is None:
        result.error = "the stream ended without [DONE]"
    return result


async def _read_all(reader: asyncio.StreamReader):
    while data := await reader.read(65536):
        yield data


def question(rng: random.Random) -> str:
    return "Q: " + "+".join(str(rng.randint(1, 999)) for _ in range(4))


async def client_loop(i: int, url, model, args, deadline: float, totals: Totals) -> None:
    rng = random.Random(i)
    parsed = urllib.parse.urlparse(url)
    while time.perf_counter() < deadline:
        body = {"model": model, "messages": [{"role": "user", "content": question(rng)}],
                "max_tokens": args.max_tokens, "temperature": args.temperature, "stream": True,
                "stream_options": {"include_usage": True}}
        if args.alpha is not None:
            body["alpha"] = args.alpha
        totals.results.append(await one_request(parsed.hostname, parsed.port, "/v1/chat/completions", body,
                                                 args.api_key))


def rss_mib(pid: int | None) -> float | None:
    if pid is None:
        return None
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return None


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def start_server(serve_args: list[str]) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([*RAST, "serve", "--port", "0", *serve_args], stdout=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if "listening on http://" in line:
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
            return proc, line.split("listening on ")[1].split(" ")[0]
    raise SystemExit(f"rast serve did not start (exit status {proc.wait()})")


def main() -> None:
    argv = sys.argv[1:]
    serve_args = argv[argv.index("--") + 1:] if "--" in argv else None
    argv = argv[:argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", help="a running server (default: start one with the arguments after --)")
    ap.add_argument("--pid", type=int, help="the running server's process id, for its RSS")
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--duration", type=float, default=60.0, help="seconds during which requests are started")
    ap.add_argument("--rounds", type=int, default=1,
                    help="repeat the load this many times (RSS is read after each: growth vs working set)")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--alpha", type=float)
    ap.add_argument("--api-key")
    ap.add_argument("--json", type=Path, help="also write the summary here")
    args = ap.parse_args(argv)
    proc = None
    if args.url is None:
        proc, url = start_server(serve_args or [])
        pid = proc.pid
    else:
        url, pid = args.url.rstrip("/"), args.pid
    try:
        summary = asyncio.run(run(url, pid, args))
    finally:
        if proc is not None:
            proc.terminate()
            summary_rc = proc.wait(60)
            print(f"server exit status after SIGTERM: {summary_rc}")
    print(json.dumps(summary, indent=1))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1) + "\n")


async def run(url: str, pid: int | None, args) -> dict:
    import urllib.request

    req = urllib.request.Request(url + "/v1/models")
    if args.api_key:
        req.add_header("Authorization", f"Bearer {args.api_key}")
    with urllib.request.urlopen(req) as r:
        model = json.loads(r.read())["data"][0]["id"]
    warm = Totals()  # one request per client at full concurrency: buffers and pools reach their working size
    await asyncio.gather(*(client_loop(-1 - i, url, model, args, time.perf_counter() + 1e-9, warm)
                           for i in range(args.clients)))
    rss_before = rss_mib(pid)
    totals = Totals()
    rss_rounds = []
    t0 = time.perf_counter()
    for _ in range(args.rounds):
        deadline = time.perf_counter() + args.duration
        await asyncio.gather(*(client_loop(i, url, model, args, deadline, totals) for i in range(args.clients)))
        rss_rounds.append(rss_mib(pid))
    wall = time.perf_counter() - t0
    rss_after = rss_rounds[-1]
    results = totals.results
    failed = [r for r in results if r.error is not None or r.status != 200]
    ttfts = [r.ttft for r in results if r.ttft is not None]
    tokens = sum(r.tokens for r in results if r.error is None)
    summary = {
        "url": url, "model": model, "clients": args.clients, "duration_s": args.duration, "wall_s": round(wall, 2),
        "max_tokens": args.max_tokens, "temperature": args.temperature, "alpha": args.alpha,
        "requests": len(results), "failed": len(failed), "http_5xx": sum(500 <= r.status < 600 for r in results),
        "tokens": tokens, "tokens_per_s": round(tokens / wall, 1),
        "ttft_p50_s": percentile(ttfts, 50), "ttft_p99_s": percentile(ttfts, 99),
        "rss_before_mib": rss_before, "rss_after_mib": rss_after, "rss_after_each_round_mib": rss_rounds,
        "warmup_failed": sum(r.error is not None or r.status != 200 for r in warm.results),
        "first_errors": sorted({str(r.error)[:200] for r in failed})[:5],
    }
    for key in ("ttft_p50_s", "ttft_p99_s"):
        if summary[key] is not None:
            summary[key] = round(summary[key], 3)
    for key in ("rss_before_mib", "rss_after_mib"):
        if summary[key] is not None:
            summary[key] = round(summary[key], 1)
    summary["rss_after_each_round_mib"] = [None if r is None else round(r, 1) for r in rss_rounds]
    return summary


if __name__ == "__main__":
    main()
