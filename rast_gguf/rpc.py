"""llama.cpp's RPC backend (ggml-rpc): a model's offloaded layers on other machines' devices, over TCP.

`connect(endpoints)` first checks every HOST:PORT with a bounded handshake of our own (refused,
silent, or speaking another protocol version: a `RpcError` naming the server), then adds each
server's devices through the backend's `ggml_backend_rpc_add_server` (found with
ggml_backend_reg_get_proc_address, as llama.cpp's --rpc does) and returns them as `RemoteDevice`s.
Their handles go into llama_model_params.devices (rast_gguf.handles.Model) before the local GPUs,
the order llama.cpp itself uses, so -ngl and --tensor-split split a model as in llama.cpp. The
devices are not registered globally: a model given no devices stays local. ggml-rpc has no
timeouts and aborts the process when a server goes away; `Guard` makes both an error of one line:
it puts receive/send timeouts on llama.cpp's sockets to the servers (so a server that stops
answering cannot hang a run) and installs a ggml abort callback that names the lost server and
exits with status 1 (a half-computed graph cannot be resumed; batch outputs are flushed record by
record, so running again resumes). `serve()` runs llama.cpp's own RPC server
(ggml_backend_rpc_start_server, from the same libggml-rpc as the client) for `rast rpc-server`.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import re
import socket
import struct
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rast_gguf.errors import RpcError, UsageError

RPC_CMD_HELLO = 14
_HELLO_CAPS = 24                   # rpc_msg_hello_req: connection capabilities (zeros: plain TCP, no RDMA)
_HELLO_RESPONSE = 4 + _HELLO_CAPS  # major, minor, patch, padding, capabilities
CONNECT_TIMEOUT_S = 5.0
DEFAULT_TIMEOUT_S = 300.0          # longest silence from a server mid-run (RAST_RPC_TIMEOUT overrides)
DEFAULT_PORT = 50052
DEVICE_TYPES = {0: "CPU", 1: "GPU", 2: "integrated GPU", 3: "accelerator"}


@dataclass(frozen=True)
class RemoteDevice:
    endpoint: str
    name: str          # llama.cpp's name for it: RPC0, RPC1, ...
    handle: int        # ggml_backend_dev_t
    free_bytes: int
    total_bytes: int


# --- libggml through ctypes ----------------------------------------------------------------------

def _lib_dir() -> Path:
    import llama_cpp

    return Path(llama_cpp.__file__).parent / "lib"


class _Ggml:
    """The few libggml calls this module needs, declared once."""

    def __init__(self):
        from rast_gguf import _llama

        lib = _llama.libggml()
        vp, cp, sz = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t
        for fn, res, args in [("ggml_backend_reg_by_name", vp, [cp]), ("ggml_backend_reg_get_proc_address", vp, [vp, cp]),
                              ("ggml_backend_reg_dev_count", sz, [vp]), ("ggml_backend_reg_dev_get", vp, [vp, sz]),
                              ("ggml_backend_dev_count", sz, []), ("ggml_backend_dev_get", vp, [sz]),
                              ("ggml_backend_dev_by_name", vp, [cp]), ("ggml_backend_dev_name", cp, [vp]),
                              ("ggml_backend_dev_description", cp, [vp]), ("ggml_backend_dev_type", ctypes.c_int, [vp]),
                              ("ggml_backend_dev_backend_reg", vp, [vp]), ("ggml_backend_reg_name", cp, [vp]),
                              ("ggml_backend_dev_memory", None, [vp, ctypes.POINTER(sz), ctypes.POINTER(sz)])]:
            f = getattr(lib, fn)
            f.restype, f.argtypes = res, args
            setattr(self, fn, f)
        self.set_abort_callback = lib.ggml_set_abort_callback
        self.set_abort_callback.restype, self.set_abort_callback.argtypes = vp, [vp]

    def rpc_reg(self) -> int:
        reg = self.ggml_backend_reg_by_name(b"RPC")
        if not reg:
            raise RpcError("this llama-cpp-python was built without llama.cpp's RPC backend; rebuild it: "
                           "rm -rf .venv .wheels/llama_cpp_python-* && bash scripts/setup.sh (it adds -DGGML_RPC=on)")
        return reg

    def memory(self, dev: int) -> tuple[int, int]:
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        self.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
        return free.value, total.value

    def is_rpc(self, dev: int) -> bool:
        reg = self.ggml_backend_dev_backend_reg(dev)
        return bool(reg) and self.ggml_backend_reg_name(reg) == b"RPC"


_ggml: _Ggml | None = None


def ggml() -> _Ggml:
    global _ggml
    if _ggml is None:
        _ggml = _Ggml()
    return _ggml


def supported() -> bool:
    """Whether this llama.cpp build has the RPC backend."""
    return bool(ggml().ggml_backend_reg_by_name(b"RPC"))


def protocol_version() -> tuple[int, int, int]:
    """The RPC protocol this build speaks (RPC_PROTO_*_VERSION of its installed ggml-rpc.h)."""
    for include in (_lib_dir().parent / "include", _lib_dir().parent.parent / "include"):
        header = include / "ggml-rpc.h"
        if header.exists():
            text = header.read_text()
            found = [re.search(rf"#define\s+RPC_PROTO_{part}_VERSION\s+(\d+)", text) for part in ("MAJOR", "MINOR", "PATCH")]
            if all(found):
                return tuple(int(m.group(1)) for m in found)  # type: ignore[return-value]
    raise RpcError(f"cannot find ggml-rpc.h beside {_lib_dir()} to read the RPC protocol version; reinstall")


# --- endpoints and the handshake -----------------------------------------------------------------

def parse_endpoints(text: str | Sequence[str] | None, flag: str = "--rpc") -> list[str]:
    """'HOST:PORT[,HOST:PORT...]' (or several such strings) -> ['HOST:PORT', ...], checked."""
    if not text:
        return []
    items = [text] if isinstance(text, str) else list(text)
    endpoints = [e.strip() for item in items for e in item.split(",") if e.strip()]
    for e in endpoints:
        host, colon, port = e.rpartition(":")
        if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536 or ":" in host:
            raise UsageError(f"{flag} takes HOST:PORT[,HOST:PORT...] (IPv4 address or host name), got {e!r}")
    if len(set(endpoints)) != len(endpoints):
        raise UsageError(f"{flag} names a server twice: {', '.join(endpoints)}")
    return endpoints


def _split(endpoint: str) -> tuple[str, int]:
    host, _, port = endpoint.rpartition(":")
    return host, int(port)


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def hello(endpoint: str, timeout: float = CONNECT_TIMEOUT_S) -> tuple[tuple[int, int, int], float]:
    """Connect and do the RPC handshake with bounded waits; (server's protocol version, seconds it took)."""
    host, port = _split(endpoint)
    t0 = time.perf_counter()
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except socket.gaierror:
        raise RpcError(f"RPC server {endpoint}: cannot resolve the host name {host!r}") from None
    except ConnectionRefusedError:
        raise RpcError(f"RPC server {endpoint}: connection refused; start it there (rast rpc-server --host ADDRESS "
                       f"--port {port}) or fix --rpc") from None
    except (socket.timeout, TimeoutError):
        raise RpcError(f"RPC server {endpoint}: no answer to a connection within {timeout:g} s (host down, or the port "
                       "filtered by a firewall?)") from None
    except OSError as e:
        raise RpcError(f"RPC server {endpoint}: cannot connect ({e.strerror or e})") from None
    with sock:
        try:
            sock.sendall(struct.pack("<BQ", RPC_CMD_HELLO, _HELLO_CAPS) + bytes(_HELLO_CAPS))
            head = _recv_exactly(sock, 8)
            body = _recv_exactly(sock, _HELLO_RESPONSE) if len(head) == 8 else b""
        except (socket.timeout, TimeoutError):
            raise RpcError(f"RPC server {endpoint}: accepted the connection but did not answer within {timeout:g} s; "
                           "an rpc-server serves one client at a time: is another process using it?") from None
        except (ConnectionResetError, BrokenPipeError):
            head = body = b""  # closed on us: what an rpc-server of another protocol version does
        except OSError as e:
            raise RpcError(f"RPC server {endpoint}: the connection failed during the handshake "
                           f"({e.strerror or e})") from None
    ours = ".".join(map(str, protocol_version()))
    if len(head) == 8 and struct.unpack("<Q", head)[0] in (3, 4) and len(body) >= 3:  # protocol 1.x-3.x answers
        return tuple(body[:3]), time.perf_counter() - t0  # type: ignore[return-value]
    if len(head) < 8 or struct.unpack("<Q", head)[0] != _HELLO_RESPONSE or len(body) < _HELLO_RESPONSE:
        raise RpcError(f"RPC server {endpoint} did not answer the RPC handshake of protocol {ours}: another "
                       "llama.cpp version's rpc-server, or not an rpc-server at all; run the one of this "
                       "installation there (rast rpc-server)")
    version = tuple(body[:3])
    return version, time.perf_counter() - t0  # type: ignore[return-value]


def check_version(endpoint: str, version: tuple[int, int, int]) -> None:
    ours = protocol_version()
    if version[0] != ours[0] or version[1] > ours[1]:  # ggml-rpc's own rule
        raise RpcError(f"RPC server {endpoint} speaks RPC protocol {'.'.join(map(str, version))} but this build "
                       f"speaks {'.'.join(map(str, ours))}: run the rpc-server of the same llama.cpp version "
                       "(rast rpc-server from an installation of this rast-gguf)")


# --- devices -------------------------------------------------------------------------------------

def connect(endpoints: Sequence[str], timeout: float = CONNECT_TIMEOUT_S) -> list[RemoteDevice]:
    """Check every server, then add its devices to llama.cpp (once per endpoint and process)."""
    g = ggml()
    add_server_fn = g.ggml_backend_reg_get_proc_address(g.rpc_reg(), b"ggml_backend_rpc_add_server")
    add_server = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_char_p)(add_server_fn)
    for endpoint in endpoints:
        version, _ = hello(endpoint, timeout)
        check_version(endpoint, version)
    install_abort_handler(endpoints)
    devices = []
    for endpoint in endpoints:
        reg = add_server(endpoint.encode())
        if not reg:
            raise RpcError(f"RPC server {endpoint} offers no devices")
        for i in range(g.ggml_backend_reg_dev_count(reg)):
            dev = g.ggml_backend_reg_dev_get(reg, i)
            free, total = g.memory(dev)
            devices.append(RemoteDevice(endpoint, g.ggml_backend_dev_name(dev).decode(), dev, free, total))
    return devices


def local_gpu_devices() -> list[int]:
    """The devices llama.cpp offloads to when given none (GPUs; integrated ones only if no GPU), RPC excluded."""
    g = ggml()
    devs = [g.ggml_backend_dev_get(i) for i in range(g.ggml_backend_dev_count())]
    gpus = [d for d in devs if g.ggml_backend_dev_type(d) == 1 and not g.is_rpc(d)]
    return gpus or [d for d in devs if g.ggml_backend_dev_type(d) == 2]


def model_devices(remote: Sequence[RemoteDevice]) -> list[int] | None:
    """llama_model_params.devices for a model placed on `remote` and the local GPUs (None: local only)."""
    return [d.handle for d in remote] + local_gpu_devices() if remote else None


# --- a server that goes away ---------------------------------------------------------------------

_guarded: list[str] = []
_abort_callback = None  # kept alive: ggml holds the C pointer


def _lost_servers(endpoints: Sequence[str], attempts: int = 5, pause: float = 0.1) -> list[str]:
    """The endpoints that refuse a connection. A killed server's process closes its client
    connection (which is what made ggml abort) an instant before its listening socket, so one
    accepted probe proves little: probe again until refused (lost) or until a probe waits (a live
    server busy with its one client leaves our earlier probes in its accept queue of one)."""
    lost, settled = [], set()
    for attempt in range(attempts):
        for endpoint in endpoints:
            if endpoint in settled:
                continue
            try:
                socket.create_connection(_split(endpoint), timeout=0.5).close()
            except (socket.timeout, TimeoutError):
                settled.add(endpoint)
            except OSError:
                lost.append(endpoint)
                settled.add(endpoint)
        if attempt + 1 < attempts and len(settled) < len(endpoints):
            time.sleep(pause)
    return lost


def _on_ggml_abort(message: bytes | None) -> None:
    text = (message or b"").decode("utf-8", "replace").strip()
    endpoints = list(_guarded)
    lost = _lost_servers(endpoints)
    if lost:
        line = (f"lost the RPC server {', '.join(lost)} mid-run (it no longer accepts connections); restart it and run "
                "again (a batch resumes where it stopped)")
    elif "RPC" in text or "rpc" in text:
        line = (f"an RPC server ({', '.join(endpoints)}) stopped answering mid-run ({text.split(': ', 1)[-1]}; "
                f"no answer within RAST_RPC_TIMEOUT={timeout_seconds():g} s, or the connection broke); "
                "check the servers and run again")
    else:
        line = f"llama.cpp stopped: {text}"
    try:
        sys.stdout.flush()
    except Exception:
        pass
    os.write(2, f"\nerror: {line}\n".encode())
    os._exit(1)


def install_abort_handler(endpoints: Sequence[str]) -> None:
    """Make a ggml abort (ggml-rpc's reaction to a lost server) one line on stderr and exit status 1."""
    global _abort_callback
    for endpoint in endpoints:
        if endpoint not in _guarded:
            _guarded.append(endpoint)
    if _abort_callback is None:
        _abort_callback = ctypes.CFUNCTYPE(None, ctypes.c_char_p)(_on_ggml_abort)
        ggml().set_abort_callback(ctypes.cast(_abort_callback, ctypes.c_void_p))


def timeout_seconds() -> float:
    value = os.environ.get("RAST_RPC_TIMEOUT", "")
    try:
        return float(value) if value else DEFAULT_TIMEOUT_S
    except ValueError:
        raise UsageError(f"RAST_RPC_TIMEOUT must be a number of seconds, got {value!r}") from None


def _peer_addresses(endpoints: Sequence[str]) -> set[tuple[str, int]]:
    peers = set()
    for endpoint in endpoints:
        host, port = _split(endpoint)
        try:
            for info in socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_STREAM):
                peers.add((info[4][0], port))
        except socket.gaierror:
            pass
    return peers


def set_socket_timeouts(endpoints: Sequence[str], seconds: float) -> int:
    """Put SO_RCVTIMEO/SO_SNDTIMEO on this process's TCP sockets to the endpoints (llama.cpp's own
    connections, which it opens without any); returns how many were set."""
    peers = _peer_addresses(endpoints)
    fd_dir = "/proc/self/fd" if os.path.isdir("/proc/self/fd") else "/dev/fd"
    timeval = struct.pack("ll", int(seconds), int((seconds % 1) * 1e6))
    n_set = 0
    for name in os.listdir(fd_dir):
        try:
            dup = os.dup(int(name))
        except OSError:
            continue  # closed meanwhile
        try:
            sock = socket.socket(fileno=dup)
        except OSError:  # not a socket
            os.close(dup)
            continue
        try:
            if sock.type == socket.SOCK_STREAM and sock.getpeername()[:2] in peers:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)
                n_set += 1
        except OSError:
            pass
        finally:
            sock.close()  # the duplicate only
    return n_set


class Guard:
    """While open: llama.cpp's connections to the endpoints get timeouts as soon as they appear
    (checked every `interval` s by a thread: a connection opens at model load, or later if all its
    buffers were freed), and a ggml abort is one line naming the lost server."""

    def __init__(self, endpoints: Sequence[str], seconds: float | None = None, interval: float = 0.5):
        self.endpoints = list(endpoints)
        self.seconds = timeout_seconds() if seconds is None else seconds
        self._stop = threading.Event()
        install_abort_handler(self.endpoints)
        self._thread = threading.Thread(target=self._watch, args=(interval,), name="rast-rpc-guard", daemon=True)
        self._thread.start()

    def _watch(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self.apply()

    def apply(self) -> int:
        return set_socket_timeouts(self.endpoints, self.seconds)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


# --- the server ----------------------------------------------------------------------------------

def server_devices(names: Sequence[str] = ()) -> list[int]:
    """The devices to serve: the named ones, else every GPU/accelerator, else the CPU (as rpc-server)."""
    g = ggml()
    if names:
        devices = []
        for name in names:
            dev = g.ggml_backend_dev_by_name(name.encode())
            if not dev:
                known = ", ".join(g.ggml_backend_dev_name(g.ggml_backend_dev_get(i)).decode()
                                  for i in range(g.ggml_backend_dev_count()))
                raise UsageError(f"no device named {name!r} here; this build has: {known}")
            devices.append(dev)
        return devices
    devs = [g.ggml_backend_dev_get(i) for i in range(g.ggml_backend_dev_count())]
    accelerators = [d for d in devs if g.ggml_backend_dev_type(d) not in (0, 3) and not g.is_rpc(d)]
    return accelerators or [d for d in devs if g.ggml_backend_dev_type(d) == 0][:1]


def describe_device(dev: int) -> str:
    g = ggml()
    free, total = g.memory(dev)
    kind = DEVICE_TYPES.get(g.ggml_backend_dev_type(dev), "?")
    return (f"{g.ggml_backend_dev_name(dev).decode()} ({kind}): {g.ggml_backend_dev_description(dev).decode()}, "
            f"{free / 2**30:.1f} of {total / 2**30:.1f} GiB free")


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def check_can_listen(host: str, port: int) -> None:
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        raise UsageError(f"--host must be an IPv4 address of this machine (llama.cpp's server binds IPv4 only), "
                         f"got {host!r}") from None
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        probe.bind((host, port))
    except OSError as e:
        raise RpcError(f"cannot listen on {host}:{port} ({e.strerror or e}); is another server there? "
                       "Choose another --port") from None
    finally:
        probe.close()


def serve(host: str, port: int, devices: Sequence[int], *, n_threads: int, cache_dir: str | None = None) -> None:
    """Run llama.cpp's RPC server until the process is stopped (it never returns on its own
    unless it cannot listen). The server runs in a thread so that Ctrl-C / SIGTERM end the process."""
    g = ggml()
    start_fn = g.ggml_backend_reg_get_proc_address(g.rpc_reg(), b"ggml_backend_rpc_start_server")
    start = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_size_t,
                             ctypes.POINTER(ctypes.c_void_p))(start_fn)
    check_can_listen(host, port)
    device_array = (ctypes.c_void_p * len(devices))(*devices)
    args = (f"{host}:{port}".encode(), cache_dir.encode() if cache_dir else None, n_threads, len(devices),
            device_array)
    thread = threading.Thread(target=start, args=args, name="ggml-rpc-server", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.5)
    raise RpcError(f"the RPC server on {host}:{port} stopped (see its messages above)")
