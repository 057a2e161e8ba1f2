"""A local stand-in for the Hub's HTTP API, on 127.0.0.1, for offline tests of the upload path.

It implements just the endpoints huggingface_hub calls to create a repo, a branch and a commit
(validate-yaml, preupload, the LFS batch API with a "basic" PUT transfer, commit, with the
deletions a commit may carry), and to list (the tree) and download (repo info at a revision,
HEAD/GET of `resolve/REVISION/PATH`) what was committed: each commit gets its own id and the
tree of a branch is its commits applied in order (files added, files and folders deleted), so a
commit id or a branch name is a revision. It records every request (path, Authorization header)
and rebuilds the committed files, so tests can compare them byte for byte. It is NOT the real Hub: it checks that our client code drives huggingface_hub
correctly and what goes over the wire, not that the Hub accepts it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

COMMIT_OID = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class Commit:
    repo: str
    revision: str
    summary: str
    files: dict[str, bytes]
    oid: str = COMMIT_OID
    deleted: list[str] = field(default_factory=list)  # paths; a folder ends with "/"


@dataclass
class State:
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)  # method, path, auth
    unexpected: list[str] = field(default_factory=list)
    repos: dict[str, dict] = field(default_factory=dict)
    branches: list[tuple[str, str]] = field(default_factory=list)
    lfs: dict[str, bytes] = field(default_factory=dict)
    commits: list[Commit] = field(default_factory=list)
    fail_with: tuple[int, str] | None = None  # answer every request with this (status, message)

    def tree(self, repo: str, revision: str) -> tuple[str, dict[str, bytes]] | None:
        """(commit id, files) of `repo` at a branch (its newest commit) or at a commit id (its
        branch up to that commit); None when there is no such revision."""
        mine = [c for c in self.commits if c.repo == repo]
        named = [c for c in mine if c.oid == revision]
        if named:
            mine, revision = mine[: mine.index(named[-1]) + 1], named[-1].revision
        chain = [c for c in mine if c.revision == revision]
        if not chain:
            return None
        files: dict[str, bytes] = {}
        for c in chain:  # as the Hub applies a commit: its deletions, then its files
            for gone in c.deleted:
                for path in [p for p in files if p == gone or p.startswith(gone)]:
                    del files[path]
            files.update(c.files)
        return chain[-1].oid, files


class Handler(BaseHTTPRequestHandler):
    state: State  # set on the subclass made per server
    base: str

    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    # ------------------------------------------------------------------ plumbing
    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = b""
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(
        self, status: int, payload: dict | bytes | None = None, headers: dict | None = None
    ) -> None:
        raw = isinstance(payload, bytes)
        data = payload if raw else json.dumps(payload if payload is not None else {}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream" if raw else "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _handle(self, method: str) -> None:
        body = self._body()
        auth = self.headers.get("Authorization")
        self.state.requests.append((method, self.path, auth))
        if self.state.fail_with:
            status, message = self.state.fail_with
            self._send(status, {"error": message.replace("{auth}", auth or "")})
            return
        for route_method, pattern, endpoint in ROUTES:
            m = re.fullmatch(pattern, self.path.split("?")[0])
            if m and route_method == method:
                self._send(*endpoint(self, body, *m.groups()))
                return
        self.state.unexpected.append(f"{method} {self.path}")
        self._send(404, {"error": f"mock hub: no route for {method} {self.path}"})

    def do_POST(self) -> None:  # noqa: N802
        self._handle("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._handle("PUT")

    def do_GET(self) -> None:  # noqa: N802
        self._handle("GET")

    def do_HEAD(self) -> None:  # noqa: N802
        self._handle("HEAD")

    # ------------------------------------------------------------------ endpoints
    def create_repo(self, body: bytes):
        req = json.loads(body)
        repo = f"{req['organization']}/{req['name']}"
        self.state.repos[repo] = req
        return 200, {"url": f"{self.base}/{repo}", "name": repo, "id": repo}

    def validate_yaml(self, body: bytes):
        return 200, {"errors": [], "warnings": []}

    def create_branch(self, body: bytes, repo: str, branch: str):
        self.state.branches.append((repo, branch))
        return 200, {}

    def preupload(self, body: bytes, repo: str, revision: str):
        files = json.loads(body)["files"]
        modes = [
            {
                "path": f["path"],
                "uploadMode": "lfs" if f["path"].endswith(".safetensors") else "regular",
                "shouldIgnore": False,
            }
            for f in files
        ]
        return 200, {"files": modes}

    def lfs_batch(self, body: bytes, repo: str):
        req = json.loads(body)
        objects = [
            {
                "oid": o["oid"],
                "size": o["size"],
                "authenticated": True,
                "actions": {"upload": {"href": f"{self.base}/lfs-storage/{o['oid']}"}},
            }
            for o in req["objects"]
        ]
        return 200, {"transfer": "basic", "objects": objects}

    def lfs_put(self, body: bytes, oid: str):
        if hashlib.sha256(body).hexdigest() != oid:
            return 400, {"error": "sha256 mismatch"}
        self.state.lfs[oid] = body
        return 200, {}

    def commit(self, body: bytes, repo: str, revision: str):
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        header = next(item["value"] for item in lines if item["key"] == "header")
        files, deleted = {}, []
        for item in lines:
            value = item["value"]
            if item["key"] == "deletedFile":
                deleted.append(value["path"])
            elif item["key"] == "deletedFolder":
                deleted.append(value["path"].rstrip("/") + "/")
            elif item["key"] == "file":
                files[value["path"]] = base64.b64decode(value["content"])
            elif item["key"] == "lfsFile":
                if value["oid"] not in self.state.lfs:
                    return 422, {"error": f"LFS object {value['oid']} was never uploaded"}
                files[value["path"]] = self.state.lfs[value["oid"]]
        # the first commit has the id tests know (COMMIT_OID); later ones ids of their own
        n = len(self.state.commits)
        oid = COMMIT_OID if n == 0 else hashlib.sha1(f"commit-{n}".encode()).hexdigest()
        self.state.commits.append(Commit(repo, revision, header["summary"], files, oid, deleted))
        return 200, {
            "commitUrl": f"{self.base}/{repo}/commit/{oid}",
            "commitOid": oid,
            "success": True,
        }

    def repo_info(self, body: bytes, repo: str, revision: str):
        found = self.state.tree(repo, unquote(revision))
        if found is None:
            return 404, {"error": f"mock hub: {repo} has no revision {revision}"}
        oid, files = found
        siblings = [{"rfilename": path, "size": len(data)} for path, data in sorted(files.items())]
        return 200, {"id": repo, "modelId": repo, "sha": oid, "siblings": siblings,
                     "private": False, "tags": [], "downloads": 0, "likes": 0}  # fmt: skip

    def list_tree(self, body: bytes, repo: str, revision: str, prefix: str | None):
        found = self.state.tree(repo, unquote(revision))
        if found is None and repo in self.state.repos and unquote(revision) == "main":
            found = ("", {})  # created, nothing committed yet (the Hub: just .gitattributes)
        if found is None:
            return 404, {"error": f"mock hub: {repo} has no revision {revision}"}
        prefix = unquote(prefix or "").strip("/")
        entries = [
            {"type": "file", "path": path, "size": len(data),
             "oid": hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()}
            for path, data in sorted(found[1].items())
            if not prefix or path.startswith(prefix + "/")
        ]  # fmt: skip
        return 200, entries

    def resolve(self, body: bytes, repo: str, revision: str, path: str):
        found = self.state.tree(repo, unquote(revision))
        path = unquote(path)
        if found is None or path not in found[1]:
            return 404, {"error": f"mock hub: no {path} in {repo}@{revision}"}
        oid, files = found
        etag = hashlib.sha256(files[path]).hexdigest()
        headers = {"X-Repo-Commit": oid, "ETag": f'"{etag}"'}
        return 200, files[path], headers


ROUTES = [
    ("POST", r"/api/repos/create", Handler.create_repo),
    ("POST", r"/api/validate-yaml", Handler.validate_yaml),
    ("POST", r"/api/models/([^/]+/[^/]+)/branch/([^/]+)", Handler.create_branch),
    ("POST", r"/api/models/([^/]+/[^/]+)/preupload/([^/]+)", Handler.preupload),
    ("POST", r"/([^/]+/[^/]+)\.git/info/lfs/objects/batch", Handler.lfs_batch),
    ("PUT", r"/lfs-storage/([0-9a-f]{64})", Handler.lfs_put),
    ("POST", r"/api/models/([^/]+/[^/]+)/commit/([^/]+)", Handler.commit),
    ("GET", r"/api/models/([^/]+/[^/]+)/revision/([^/]+)", Handler.repo_info),
    ("GET", r"/api/models/([^/]+/[^/]+)/tree/([^/]+)(?:/(.*))?", Handler.list_tree),
    ("HEAD", r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", Handler.resolve),
    ("GET", r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", Handler.resolve),
]


class MockHub:
    """`with MockHub() as hub:` ... `hub.url` for HF_ENDPOINT, `hub.state` for what it saw."""

    def __init__(self) -> None:
        self.state = State()
        handler = type("BoundHandler", (Handler,), {"state": self.state})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        handler.base = self.url
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> MockHub:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
