"""A stand-in for the Hugging Face hub on loopback: the endpoints huggingface_hub calls to list a
repo and download a file, answered the way the hub answers them (headers and error codes).

    GET  /api/models/{owner}/{name}/revision/{rev}   -> {"id", "sha", "siblings": [{"rfilename"}]}
    HEAD /{owner}/{name}/resolve/{rev}/{path}        -> ETag, X-Repo-Commit, Content-Length
    GET  /{owner}/{name}/resolve/{rev}/{path}        -> the bytes
    404s carry X-Error-Code RepoNotFound / RevisionNotFound / EntryNotFound like the hub's.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse


class FakeHub:
    def __init__(self, repos: dict[str, dict[str, bytes]]):
        self.repos = repos
        self.commits = {repo: hashlib.sha1(repo.encode()).hexdigest() for repo in repos}
        self.requests: list[tuple[str, str]] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_HEAD(self):
                hub._answer(self, head=True)

            def do_GET(self):
                hub._answer(self, head=False)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "FakeHub":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def file_gets(self) -> list[str]:
        return [path for method, path in self.requests if method == "GET" and "/resolve/" in path]

    def _answer(self, h: BaseHTTPRequestHandler, head: bool) -> None:
        path = unquote(urlparse(h.path).path)
        self.requests.append(("HEAD" if head else "GET", path))
        api = re.match(r"^/api/models/([^/]+/[^/]+)/revision/([^/]+)$", path)
        resolve = re.match(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", path)
        match = api or resolve
        if not match:
            return self._send(h, 404, {"X-Error-Code": "RepoNotFound"}, b"{}", head)
        repo, revision = match[1], match[2]
        if repo not in self.repos:
            return self._send(h, 401, {"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"},
                              b'{"error": "Repository not found"}', head)
        commit = self.commits[repo]
        if revision not in ("main", commit):
            return self._send(h, 404, {"X-Error-Code": "RevisionNotFound"}, b'{"error": "Invalid rev id"}', head)
        files = self.repos[repo]
        if api:
            body = json.dumps({"id": repo, "sha": commit, "siblings": [{"rfilename": f} for f in files]}).encode()
            return self._send(h, 200, {"Content-Type": "application/json"}, body, head)
        name = resolve[3]
        if name not in files:
            return self._send(h, 404, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": commit},
                              b'{"error": "Entry not found"}', head)
        data = files[name]
        headers = {"ETag": f'"{hashlib.sha256(data).hexdigest()}"', "X-Repo-Commit": commit,
                   "Content-Type": "application/octet-stream"}
        self._send(h, 200, headers, data, head)

    @staticmethod
    def _send(h: BaseHTTPRequestHandler, status: int, headers: dict, body: bytes, head: bool) -> None:
        h.send_response(status)
        for key, value in headers.items():
            h.send_header(key, value)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if not head:
            h.wfile.write(body)
