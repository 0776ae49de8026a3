"""A stand-in for the Hugging Face Hub: a local HTTP server that speaks the parts of the Hub's protocol that
``huggingface_hub`` uses to publish (``create_repo``, ``create_branch``, ``upload_folder`` / ``create_commit``
with its preupload, LFS batch, upload and verify steps, the README metadata check, and the tree listing behind
``delete_patterns``) and to download a model (``model_info``: the commit and the files; ``hf_hub_download``: the
``resolve`` endpoint's metadata and content).

It keeps what was committed in memory (path -> bytes per repository and branch), checks the bearer token on
every request and records each request as ``(method, path)`` (never headers, so never the token). Files are
answered as LFS for the extensions the Hub keeps in LFS by default (``.parquet``, ``.safetensors``, ``.png``...)
and as regular git blobs otherwise, so both upload paths run.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

_LFS_EXT = (".parquet", ".safetensors", ".bin", ".png", ".jpg", ".arrow", ".pt")
_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}


class HubDouble:
    def __init__(self, token: str):
        self.token = token
        self.repos: dict[tuple[str, str], dict] = {}  # (type, repo_id) -> {"private": bool, "branches": {...}}
        self.lfs: dict[str, bytes] = {}
        self.requests: list[tuple[str, str]] = []
        self.validated: list[str] = []  # README contents sent to /api/validate-yaml
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> "HubDouble":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def files(self, repo_type: str, repo_id: str, branch: str = "main") -> dict[str, bytes]:
        return dict(self.repos[(repo_type, repo_id)]["branches"][branch]["files"])

    def commits(self, repo_type: str, repo_id: str, branch: str = "main") -> list[dict]:
        return list(self.repos[(repo_type, repo_id)]["branches"][branch]["commits"])

    def add_model(self, repo_id: str, files: dict[str, bytes]) -> str:
        """A model repository holding ``files`` in one commit on ``main``; returns the commit."""
        oid = hashlib.sha1(json.dumps(sorted(files)).encode() + repo_id.encode()).hexdigest()
        with self.lock:
            self.repos[("model", repo_id)] = {"private": False, "branches": {"main": {
                "files": dict(files), "commits": [{"oid": oid, "summary": "add", "operations": []}]}}}
        return oid


def _sign(token: str, oid: str) -> str:
    return hashlib.sha256(f"{token}:{oid}".encode()).hexdigest()


def _handler(hub: HubDouble):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # quiet
            pass

        # -- plumbing ----------------------------------------------------------------------------
        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                out = b""
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        break
                    out += self.rfile.read(size)
                    self.rfile.readline()
            else:
                out = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.headers.get("Content-Encoding") == "gzip":
                out = gzip.decompress(out)
            return out

        def _send(self, status: int, payload=None, headers: dict | None = None) -> None:
            data = b"" if payload is None else json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            if self.command != "HEAD":  # a HEAD answer has headers only
                self.wfile.write(data)

        def _error(self, status: int, message: str, headers: dict | None = None) -> None:
            self._send(status, {"error": message}, {"X-Error-Message": message, **(headers or {})})

        def _authorized(self) -> bool:
            return self.headers.get("Authorization") == f"Bearer {hub.token}"

        def _route(self, method: str) -> None:
            url = urlsplit(self.path)
            path, query = unquote(url.path), parse_qs(url.query)
            with hub.lock:
                hub.requests.append((method, path))
            body = self._body() if method in ("POST", "PUT") else b""
            if path.startswith("/lfs-store/"):  # a presigned storage URL: its signature stands in for the token
                oid = path.split("/")[2]
                if query.get("signature", [""])[0] != _sign(hub.token, oid):
                    return self._error(403, "bad signature")
            elif not self._authorized():
                return self._error(401, "Invalid credentials in Authorization header")
            for pattern, fn in ROUTES:
                m = re.fullmatch(pattern, path)
                if m and fn.__name__.startswith(method.lower()):
                    with hub.lock:
                        return fn(self, body, query, **m.groupdict())
            return self._error(404, f"no route for {method} {path}")

        def do_GET(self):
            self._route("GET")

        def do_POST(self):
            self._route("POST")

        def do_PUT(self):
            self._route("PUT")

        def do_HEAD(self):
            self._route("HEAD")

        # -- repositories ----------------------------------------------------------------------
        def _repo(self, rtype: str, repo_id: str):
            return hub.repos.get((rtype.rstrip("s"), repo_id))

        # -- downloads ---------------------------------------------------------------------------
        def _resolved(self, repo_id: str, rev: str, path: str) -> "tuple[str, bytes] | None":
            """(the commit, the file's bytes) at ``rev`` (a branch or a commit), or None with the error answered."""
            repo = self._repo("models", repo_id)
            if repo is None:
                return self._error(404, "Repository not found", {"X-Error-Code": "RepoNotFound"})
            for name, branch in repo["branches"].items():
                commit = branch["commits"][-1]["oid"] if branch["commits"] else "0" * 40
                if rev in (commit, name):
                    if path not in branch["files"]:
                        return self._error(404, "Entry not found", {"X-Error-Code": "EntryNotFound"})
                    return commit, branch["files"][path]
            return self._error(404, "Revision not found", {"X-Error-Code": "RevisionNotFound"})

        def _serve(self, repo_id: str, rev: str, path: str) -> None:
            """A file's metadata (HEAD) or content (GET), as the Hub's ``resolve`` endpoint answers."""
            found = self._resolved(repo_id, rev, path)
            if found is None:
                return
            commit, data = found
            self.send_response(200)
            for k, v in {"X-Repo-Commit": commit, "ETag": f'"{hashlib.sha1(data).hexdigest()}"',
                         "Content-Type": "application/octet-stream", "Content-Length": str(len(data))}.items():
                self.send_header(k, v)
            self.end_headers()
            if self.command == "GET":
                self.wfile.write(data)

        def head_resolve(self, body, query, repo_id, rev, path):
            self._serve(repo_id, rev, path)

        def get_resolve(self, body, query, repo_id, rev, path):
            self._serve(repo_id, rev, path)

        def post_create(self, body, query):
            data = json.loads(body)
            name = data["name"] if not data.get("organization") else f"{data['organization']}/{data['name']}"
            rtype = data.get("type") or "model"
            url = f"{hub.endpoint}/{_PREFIX[rtype]}{name}"
            if (rtype, name) in hub.repos:
                msg = "You already created this repo"
                return self._send(409, {"error": msg, "url": url}, {"X-Error-Message": msg})
            hub.repos[(rtype, name)] = {
                "private": bool(data.get("private")),
                "branches": {"main": {"files": {".gitattributes": b"*.parquet filter=lfs diff=lfs merge=lfs -text\n"},
                                      "commits": []}},
            }
            self._send(200, {"url": url, "name": name})

        def post_branch(self, body, query, rtype, repo_id, branch):
            repo = self._repo(rtype, repo_id)
            if repo is None:
                return self._error(404, "Repository not found")
            if branch in repo["branches"]:
                return self._error(409, "Reference already exists")
            main = repo["branches"]["main"]
            repo["branches"][branch] = {"files": dict(main["files"]), "commits": list(main["commits"])}
            self._send(200, {})

        def get_info(self, body, query, rtype, repo_id, rev=None):
            repo = self._repo(rtype, repo_id)
            if repo is None:  # as the Hub says it, so that huggingface_hub raises RepositoryNotFoundError
                return self._error(404, "Repository not found", {"X-Error-Code": "RepoNotFound"})
            branch = repo["branches"].get(rev or "main")
            if branch is None:
                return self._error(404, "Revision not found")
            sha = branch["commits"][-1]["oid"] if branch["commits"] else "0" * 40
            self._send(200, {"id": repo_id, "sha": sha, "private": repo["private"],
                             "siblings": [{"rfilename": p} for p in sorted(branch["files"])]})

        def get_tree(self, body, query, rtype, repo_id, rev, sub=None):
            repo = self._repo(rtype, repo_id)
            branch = repo and repo["branches"].get(rev)
            if branch is None:
                return self._error(404, "Revision not found")
            recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
            prefix = f"{sub.strip('/')}/" if sub else ""
            entries, folders = [], set()
            for p, data in sorted(branch["files"].items()):
                if not p.startswith(prefix):
                    continue
                rest = p[len(prefix):]
                if "/" in rest and not recursive:
                    folders.add(prefix + rest.split("/")[0])
                    continue
                if recursive:
                    parts = rest.split("/")[:-1]
                    folders.update(prefix + "/".join(parts[: i + 1]) for i in range(len(parts)))
                entries.append({"type": "file", "path": p, "size": len(data),
                                "oid": hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()})
            entries += [{"type": "directory", "path": f, "oid": "0" * 40} for f in sorted(folders)]
            self._send(200, entries)

        def post_validate_yaml(self, body, query):
            """The Hub checks a README's YAML header before a commit that adds it: it must parse as a mapping."""
            import yaml

            content = json.loads(body)["content"]
            hub.validated.append(content)
            header = re.match(r"^---\n(.*?)\n---\n", content, re.S)
            try:
                meta = yaml.safe_load(header.group(1)) if header else {}
            except yaml.YAMLError as exc:
                return self._send(400, {"errors": [{"message": f"invalid YAML: {exc}"}]})
            if not isinstance(meta, dict):
                return self._send(400, {"errors": [{"message": "metadata must be a mapping"}]})
            self._send(200, {"errors": [], "warnings": [] if meta else [{"message": "empty metadata"}]})

        # -- uploads -----------------------------------------------------------------------------
        def post_preupload(self, body, query, rtype, repo_id, rev):
            if self._repo(rtype, repo_id) is None:
                return self._error(404, "Repository not found")
            files = json.loads(body)["files"]
            self._send(200, {"files": [
                {"path": f["path"], "uploadMode": "lfs" if f["path"].endswith(_LFS_EXT) else "regular",
                 "shouldIgnore": False}
                for f in files
            ]})

        def post_lfs_batch(self, body, query, prefix, repo_id):
            data = json.loads(body)
            objects = []
            for obj in data["objects"]:
                entry = {"oid": obj["oid"], "size": obj["size"]}
                if obj["oid"] not in hub.lfs:
                    entry["actions"] = {
                        "upload": {"href": f"{hub.endpoint}/lfs-store/{obj['oid']}/{obj['size']}"
                                   f"?signature={_sign(hub.token, obj['oid'])}"},
                        "verify": {"href": f"{hub.endpoint}/lfs-verify"},
                    }
                objects.append(entry)
            self._send(200, {"transfer": "basic", "objects": objects, "hash_algo": "sha256"})

        def put_lfs_store(self, body, query, oid, size):
            if hashlib.sha256(body).hexdigest() != oid or len(body) != int(size):
                return self._error(400, "content does not match its oid/size")
            hub.lfs[oid] = body
            self._send(200, {})

        def post_lfs_verify(self, body, query):
            data = json.loads(body)
            if data["oid"] not in hub.lfs or len(hub.lfs[data["oid"]]) != data["size"]:
                return self._error(404, "object not uploaded")
            self._send(200, {})

        def post_commit(self, body, query, rtype, repo_id, rev):
            repo = self._repo(rtype, repo_id)
            branch = repo and repo["branches"].get(rev)
            if branch is None:
                return self._error(404, "Revision not found")
            lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
            header = next(line["value"] for line in lines if line["key"] == "header")
            files = dict(branch["files"])
            for line in lines:
                key, value = line["key"], line["value"]
                if key == "file":
                    files[value["path"]] = base64.b64decode(value["content"])
                elif key == "lfsFile":
                    if value["oid"] not in hub.lfs:
                        return self._error(422, f"LFS object of {value['path']} was never uploaded")
                    files[value["path"]] = hub.lfs[value["oid"]]
                elif key == "deletedFile":
                    files.pop(value["path"], None)
                elif key == "deletedFolder":
                    files = {p: d for p, d in files.items() if not p.startswith(value["path"].rstrip("/") + "/")}
                elif key != "header":
                    return self._error(400, f"unknown commit operation {key}")
            oid = hashlib.sha1(json.dumps([header, sorted(files)], default=str).encode()
                               + str(len(branch["commits"])).encode()).hexdigest()
            branch["files"] = files
            branch["commits"].append({"oid": oid, "summary": header.get("summary"), "operations": lines[1:]})
            self._send(200, {"commitUrl": f"{hub.endpoint}/{_PREFIX[rtype.rstrip('s')]}{repo_id}/commit/{oid}",
                             "commitOid": oid, "pullRequestUrl": None})

    repo = r"(?P<repo_id>[^/]+/[^/]+)"
    rtype = r"(?P<rtype>models|datasets|spaces)"
    ROUTES = [
        (r"/api/repos/create", Handler.post_create),
        (r"/api/validate-yaml", Handler.post_validate_yaml),
        (rf"/api/{rtype}/{repo}/branch/(?P<branch>.+)", Handler.post_branch),
        (rf"/api/{rtype}/{repo}/preupload/(?P<rev>[^/]+)", Handler.post_preupload),
        (rf"/api/{rtype}/{repo}/commit/(?P<rev>[^/]+)", Handler.post_commit),
        (rf"/api/{rtype}/{repo}/tree/(?P<rev>[^/]+)(?P<sub>/.*)?", Handler.get_tree),
        (rf"/api/{rtype}/{repo}/revision/(?P<rev>[^/]+)", Handler.get_info),
        (rf"/api/{rtype}/{repo}", Handler.get_info),
        (rf"/(?P<prefix>datasets/|spaces/)?{repo}\.git/info/lfs/objects/batch", Handler.post_lfs_batch),
        (r"/lfs-store/(?P<oid>[0-9a-f]{64})/(?P<size>\d+)", Handler.put_lfs_store),
        (r"/lfs-verify", Handler.post_lfs_verify),
        (rf"/{repo}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", Handler.get_resolve),
        (rf"/{repo}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", Handler.head_resolve),
    ]
    return Handler
