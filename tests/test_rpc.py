"""The large model over llama.cpp's RPC backend: two `rast rpc-server` processes on 127.0.0.1 (CPU
backend) hold most of its layers; outputs equal the local engine's token for token and the numpy
oracle's log-probabilities; a server that is refused, silent, of another protocol version, killed
or frozen mid-run gives one line naming it, never a hang or a traceback."""

import llama_cpp  # noqa: F401

import contextlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from oracle import log_softmax
from test_oracle import FULL_DISTRIBUTION, PROMPT, oracle_logprobs
from rast_gguf import DeltaPair, RastEngine, SamplingParams, _llama, generate, rpc
from rast_gguf.errors import RpcError, UsageError

RAST = Path(sys.executable).parent / "rast"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(tmp_path, name):
    port = free_port()
    log = open(tmp_path / f"{name}.log", "w")
    proc = subprocess.Popen([str(RAST), "rpc-server", "--port", str(port), "-t", "1"], stdout=log,
                            stderr=subprocess.STDOUT)
    endpoint = f"127.0.0.1:{port}"
    for _ in range(600):  # until it answers the handshake
        if proc.poll() is not None:
            raise AssertionError(f"rpc-server exited: {(tmp_path / f'{name}.log').read_text()}")
        try:
            rpc.hello(endpoint, timeout=1.0)
            return proc, endpoint
        except RpcError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError("rpc-server did not start")


def stop(proc):
    if proc.poll() is None:
        proc.kill()
    proc.wait()


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rpc")
    started = [start_server(tmp, "a"), start_server(tmp, "b")]
    yield [endpoint for _, endpoint in started]
    for proc, _ in started:
        stop(proc)


def pair(t, alpha=0.5):
    return [DeltaPair(str(t.tuned), str(t.base), alpha)]


def test_this_build_has_the_rpc_backend_and_speaks_its_servers_version(servers):
    assert rpc.supported()  # scripts/setup.sh builds llama-cpp-python with -DGGML_RPC=on
    for endpoint in servers:
        version, seconds = rpc.hello(endpoint)
        assert version == rpc.protocol_version() and seconds > 0


def test_endpoint_lists():
    assert rpc.parse_endpoints("10.0.0.5:50052, host-b:7000") == ["10.0.0.5:50052", "host-b:7000"]
    assert rpc.parse_endpoints(None) == []
    for bad in ("10.0.0.5", ":50052", "h:0", "h:70000", "h:x", "a:1,a:1"):
        with pytest.raises(UsageError):
            rpc.parse_endpoints(bad)


@contextlib.contextmanager
def fake_server(answer):
    """A TCP server on 127.0.0.1 that hands each connection to answer(conn)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    conns = []

    def loop():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conns.append(conn)
            answer(conn)

    threading.Thread(target=loop, daemon=True).start()
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()
        for conn in conns:
            conn.close()


def hello_answer(version):
    def answer(conn):
        conn.recv(1 + 8 + 24)
        conn.sendall(struct.pack("<Q", 28) + bytes(version) + bytes(1 + 24))
    return answer


def test_handshake_failures_name_the_server():
    with pytest.raises(RpcError, match=r"RPC server 127.0.0.1:\d+: connection refused; start it there"):
        rpc.hello(f"127.0.0.1:{free_port()}")
    with fake_server(lambda conn: None) as silent:  # accepts, never answers (a busy or frozen server)
        t0 = time.monotonic()
        with pytest.raises(RpcError, match=f"RPC server {silent}: accepted the connection but did not answer "
                                           r"within 0.5 s"):
            rpc.hello(silent, timeout=0.5)
        assert time.monotonic() - t0 < 60  # bounded (a generous bound: this only guards against a hang)
    with fake_server(lambda conn: conn.close()) as closing:
        with pytest.raises(RpcError, match=f"RPC server {closing} did not answer the RPC handshake"):
            rpc.hello(closing)
    ours = rpc.protocol_version()
    older = (ours[0] - 1, 0, 0)
    with fake_server(hello_answer(older)) as old:
        version, _ = rpc.hello(old)
        assert version == older
        with pytest.raises(RpcError, match=f"RPC server {old} speaks RPC protocol {ours[0] - 1}.0.0 but this build "
                                           f"speaks {'.'.join(map(str, ours))}"):
            rpc.check_version(old, version)
    with fake_server(hello_answer(ours)) as same:
        assert rpc.hello(same)[0] == ours


def test_unreachable_server_is_one_line_from_the_cli(triple):
    port = free_port()
    proc = subprocess.run([str(RAST), "generate", "-p", "Hi", "-m", triple.large, "--base", triple.base, "--tuned",
                           triple.tuned, "-n", "4", "--rpc", f"127.0.0.1:{port}", "-ngl", "2"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [f"error: RPC server 127.0.0.1:{port}: connection refused; start it "
                                                f"there (rast rpc-server --host ADDRESS --port {port}) or fix --rpc"]


def test_large_model_split_over_two_servers_and_local_matches_local_and_oracle(triple, servers, capsys):
    """-ngl 2 of the large model's 3 layers: layer 0 stays local, layers 1 and 2 go to the two servers."""
    sampling = SamplingParams(temp=1.0, seed=1234, **FULL_DISTRIBUTION)
    with RastEngine(triple.large, pair(triple), n_ctx=256, n_threads=2, flash_attn="off") as local:
        greedy_local = generate(local, PROMPT, max_tokens=40, sampling=SamplingParams(temp=0)).tokens
        prompt_tokens = local.tokenize(PROMPT)
    with RastEngine(triple.large, pair(triple), n_ctx=256, n_threads=2, flash_attn="off", n_gpu_layers=2,
                    rpc=servers, tensor_split=[1, 1]) as remote:
        assert [d.endpoint for d in remote.remote] == servers and all(d.total_bytes > 0 for d in remote.remote)
        greedy_remote = generate(remote, PROMPT, max_tokens=40, sampling=SamplingParams(temp=0)).tokens
        result = generate(remote, PROMPT, max_tokens=40, record_logits=True, ignore_eos=True, sampling=sampling)
        n_shared = remote.n_shared
    assert len(greedy_local) >= 16 and greedy_remote == greedy_local

    # --rpc-small: the small pair's layers on the second server, the large model's on the first
    _llama.set_verbose(True)
    try:
        with RastEngine(triple.large, [DeltaPair(str(triple.tuned), str(triple.base), 0.5, -1)], n_ctx=256,
                        n_threads=2, flash_attn="off", n_gpu_layers=99, rpc=servers[:1],
                        rpc_small=servers[1:]) as split:
            greedy_split = generate(split, PROMPT, max_tokens=40, sampling=SamplingParams(temp=0)).tokens
    finally:
        _llama.set_verbose(False)
    log = capsys.readouterr().err
    assert greedy_split == greedy_local
    assert log.count(f"[{servers[0]}] model buffer size") == 1  # the large model
    assert log.count(f"[{servers[1]}] model buffer size") == 2  # base and tuned
    expected = oracle_logprobs(triple, result.tokens, prompt_tokens, 0.5, n_shared)
    worst = 0.0
    for got_logits, want in zip(result.step_logits, expected):
        got = log_softmax(got_logits)
        finite = np.isfinite(want)
        assert np.array_equal(np.isfinite(got), finite)
        worst = max(worst, float(np.max(np.abs(got[finite] - want[finite]))))
    assert len(expected) == 40 and worst <= 1e-4, worst


def test_cli_places_layers_on_both_servers_and_prints_the_local_output(triple, servers):
    common = ["generate", "-p", "Question: 3 + 4 = ?\nAnswer:", "-m", triple.large, "--base", triple.base,
              "--tuned", triple.tuned, "-n", "24", "--temp", "0", "-c", "256", "-t", "2"]
    local = subprocess.run([str(RAST), *map(str, common)], capture_output=True, text=True, timeout=120)
    remote = subprocess.run([str(RAST), *map(str, common), "--rpc", ",".join(servers), "-ngl", "99", "-ts", "1,1",
                             "-v"], capture_output=True, text=True, timeout=120)
    assert local.returncode == 0 and remote.returncode == 0, remote.stderr[-2000:]
    assert remote.stdout == local.stdout and len(local.stdout.strip()) > 0
    # llama.cpp's own load log: weights in both servers' buffers
    for endpoint in servers:
        assert f"[{endpoint}] model buffer size" in remote.stderr, remote.stderr[-3000:]


def test_demo_runs_the_shipped_large_model_on_a_server(servers):
    """`rast demo --rpc`: the embedded triple with the large model's layers remote prints what it prints locally."""
    common = ["demo", "--show", "1", "--problems", "4", "--alpha", "1", "--no-color"]
    local = subprocess.run([str(RAST), *common], capture_output=True, text=True, timeout=300)
    remote = subprocess.run([str(RAST), *common, "--rpc", servers[0], "-ngl", "99", "-v"], capture_output=True,
                            text=True, timeout=300)
    assert local.returncode == 0 and remote.returncode == 0, remote.stderr[-2000:]
    assert remote.stdout == local.stdout and "large + RAST a=1" in local.stdout
    assert f"[{servers[0]}] model buffer size" in remote.stderr, remote.stderr[-3000:]


def test_bench_places_the_large_model_on_a_server_in_every_mode(servers, tmp_path):
    """`rast bench --rpc`: the plain loop (the reference of every ratio) and the engine's modes alike."""
    proc = subprocess.run([str(RAST), "bench", "--large", "tiny-qwen2-large", "--small", "tiny-qwen2", "--quant-large",
                           "f16", "--quant-small", "f16", "-p", "16", "-n", "4", "-r", "1", "-t", "1", "--modes",
                           "plain,alone,sequential", "--no-transformers", "--models-dir", "m", "--json", "b.json",
                           "-ngl", "99", "-ngls", "0", "--rpc", servers[0], "-v"],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    runs = {r["mode"]: r for r in json.loads((tmp_path / "b.json").read_text())[0]["runs"]}
    assert set(runs) == {"plain", "alone", "sequential"} and all(r["tg_tps"] > 0 for r in runs.values())
    # the large model is loaded twice per mode (warm-up and timed loads for the plain loop, one engine per mode)
    assert proc.stderr.count(f"[{servers[0]}] model buffer size") >= 3, proc.stderr[-3000:]
    assert "large model over RPC" in proc.stdout


def test_doctor_lists_remote_devices(servers):
    proc = subprocess.run([str(RAST), "doctor", "--rpc", ",".join(servers)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("rpc ")]
    assert len(lines) == 2
    for line, endpoint in zip(lines, servers):
        assert line.startswith(f"rpc {endpoint}: protocol {'.'.join(map(str, rpc.protocol_version()))}")
        assert "GiB free" in line


def batch_input(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text("".join(f'{{"id": {i}, "prompt": "Item {i} is"}}\n' for i in range(40)))
    return src


def batch_args(tmp_path, triple, servers, out):
    return [str(RAST), "batch", str(batch_input(tmp_path)), "-o", str(out), "-m", str(triple.large), "--base",
            str(triple.base), "--tuned", str(triple.tuned), "-n", "64", "--temp", "0", "-c", "256", "-t", "1",
            "-np", "1", "--no-progress", "--rpc", ",".join(servers), "-ngl", "99"]


def run_until_output_then(tmp_path, triple, servers, action, env=None):
    """Start a batch over the servers; once it has written a record, act on a server; the batch's result."""
    out = tmp_path / "out.jsonl"
    proc = subprocess.Popen(batch_args(tmp_path, triple, servers, out), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})
    while proc.poll() is None and not (out.exists() and out.read_bytes().count(b"\n") >= 1):
        time.sleep(0.01)
    assert proc.poll() is None, proc.stderr.read()
    action()
    rc = proc.wait(timeout=300)
    return rc, proc.stderr.read(), out


def test_a_server_killed_mid_run_is_one_line_and_the_batch_resumes(triple, tmp_path):
    killed, kept = start_server(tmp_path, "killed"), start_server(tmp_path, "kept")
    try:
        rc, stderr, out = run_until_output_then(tmp_path, triple, [killed[1], kept[1]], killed[0].kill)
        assert rc == 1, stderr
        assert stderr.strip().splitlines()[-1] == (f"error: lost the RPC server {killed[1]} mid-run (it no longer "
                                                   "accepts connections); restart it and run again (a batch resumes "
                                                   "where it stopped)")
        assert "Traceback" not in stderr and "GGML" not in stderr
        n_done = out.read_bytes().count(b"\n")
        assert 1 <= n_done < 40
        again = subprocess.run(batch_args(tmp_path, triple, [kept[1]], out), capture_output=True, text=True,
                               timeout=300)
        assert again.returncode == 0, again.stderr
        assert f"({n_done} already there)" in again.stderr
        ids = [line.split(",")[0] for line in out.read_text().splitlines()]
        assert len(ids) == 40 == len(set(ids))
    finally:
        stop(killed[0])
        stop(kept[0])


def test_a_frozen_server_times_out_instead_of_hanging(triple, tmp_path):
    frozen, kept = start_server(tmp_path, "frozen"), start_server(tmp_path, "kept2")
    try:
        rc, stderr, _ = run_until_output_then(tmp_path, triple, [frozen[1], kept[1]],
                                              lambda: os.kill(frozen[0].pid, signal.SIGSTOP),
                                              env={"RAST_RPC_TIMEOUT": "2"})
        assert rc == 1, stderr
        last = stderr.strip().splitlines()[-1]
        assert last.startswith("error: an RPC server (") and "RAST_RPC_TIMEOUT=2 s" in last, last
        assert "Traceback" not in stderr
    finally:
        os.kill(frozen[0].pid, signal.SIGCONT)
        stop(frozen[0])
        stop(kept[0])


def test_placement_flags_reach_every_engine_building_command():
    import inspect

    from rast_gguf.cli.analyze import analyze_command
    from rast_gguf.cli.batch import batch_command
    from rast_gguf.cli.chat import chat_command
    from rast_gguf.cli.demo import demo_command
    from rast_gguf.cli.engine_setup import from_flags
    from rast_gguf.cli.eval import eval_command
    from rast_gguf.cli.generate import generate_command
    from rast_gguf.cli.serve import serve_command

    for command in (generate_command, chat_command, batch_command, eval_command, analyze_command, serve_command,
                    demo_command):
        assert {"rpc", "rpc_small", "tensor_split"} <= set(inspect.signature(command).parameters), command.__name__
    setup = from_flags({"rpc": "127.0.0.1:5000,10.0.0.2:5001", "rpc_small": None, "tensor_split": "3/1"},
                       models=False)
    assert setup.placement == {"rpc": ["127.0.0.1:5000", "10.0.0.2:5001"], "rpc_small": [], "tensor_split": [3.0, 1.0]}
    assert setup.engine_options["tensor_split"] == [3.0, 1.0]
    assert from_flags({}, models=False).placement == {}  # commands without the flags keep RastEngine's defaults
