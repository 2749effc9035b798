"""An in-memory stand-in of the Hugging Face Hub HTTP API, on 127.0.0.1, for tests of uploads and downloads.

It speaks the endpoints huggingface_hub 2.4 calls without Xet (patch `is_xet_available` to False), so the real client
runs end to end: `create_repo`, `create_branch`, `create_commit` (preupload, the git-LFS batch API with basic PUT
transfers and verify, NDJSON commits with inline and LFS files), `/api/validate-yaml`, `repo_info`,
`list_repo_tree`, and `/resolve/` with the headers `hf_hub_download` needs. It records every request, so a test can
assert that nothing was sent. Errors carry the `X-Error-Code` headers the client maps to its exceptions.
"""

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import yaml
from huggingface_hub import ModelCardData
from huggingface_hub.repocard import REGEX_YAML_BLOCK
from huggingface_hub.repocard_data import model_index_to_eval_results
from huggingface_hub.utils.sha import git_hash


LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".pkl", ".h5", ".msgpack", ".onnx", ".gguf", ".png")
LFS_MIN_SIZE = 10 * 1024 * 1024
GITATTRIBUTES = "".join(f"*{suffix} filter=lfs diff=lfs merge=lfs -text\n" for suffix in LFS_SUFFIXES).encode()
REPO_ID = r"(?P<repo_id>[\w.-]+/[\w.-]+)"


@dataclass
class StoredFile:
    content: bytes
    lfs: bool

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()

    @property
    def oid(self) -> str:
        """What the Hub reports as the file's identity: the LFS sha256, or the git blob sha1 of a regular file."""
        return self.sha256 if self.lfs else git_hash(self.content)


@dataclass
class Commit:
    oid: str
    message: str
    files: dict[str, StoredFile]


@dataclass
class Repo:
    repo_id: str
    private: bool
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)  # branch -> commit oid

    def commit(self, branch: str, message: str, files: dict[str, StoredFile]) -> Commit:
        oid = hashlib.sha1(f"{self.repo_id}:{branch}:{len(self.commits)}:{message}".encode()).hexdigest()
        self.commits[oid] = Commit(oid, message, files)
        self.branches[branch] = oid
        return self.commits[oid]

    def resolve(self, revision: str) -> Commit | None:
        oid = self.branches.get(revision, revision)
        return self.commits.get(oid)


@dataclass
class Request:
    headers: Message  # case-insensitive, as HTTP header names are
    query: dict
    raw: bytes

    @property
    def json(self):
        return json.loads(self.raw or b"{}")


class HubError(Exception):
    def __init__(self, status: int, message: str, error_code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.error_code = status, message, error_code


def metadata_errors(content: str) -> list[str]:
    """Errors the Hub's metadata check reports for a model card, checked with huggingface_hub's own parsers."""
    match = REGEX_YAML_BLOCK.search(content)
    if match is None:
        return ["README.md has no YAML metadata block (it must start with `---`)."]
    try:
        metadata = yaml.safe_load(match.group(2)) or {}
    except yaml.YAMLError as error:
        return [f"The YAML metadata does not parse: {error}"]
    if not isinstance(metadata, dict):
        return ["The YAML metadata must be a mapping."]
    errors = []
    for key in ("license", "library_name", "pipeline_tag"):
        if key in metadata and not isinstance(metadata[key], str):
            errors.append(f"`{key}` must be a string.")
    for key in ("tags", "datasets", "base_model"):
        values = metadata.get(key)
        values = [values] if isinstance(values, str) else values
        if values is not None and not (isinstance(values, list) and all(isinstance(v, str) for v in values)):
            errors.append(f"`{key}` must be a string or a list of strings.")
        elif key in ("datasets", "base_model") and values:
            errors += [f"`{key}`: {v!r} is not a repo id." for v in values if not re.fullmatch(r"[\w.-]+/[\w.-]+", v)]
    if "model-index" in metadata:
        try:
            name, results = model_index_to_eval_results(metadata["model-index"])
        except (KeyError, TypeError, ValueError) as error:
            return errors + [f"`model-index` is invalid: missing or malformed {error}."]
        if not isinstance(name, str) or not name:
            errors.append("`model-index[0].name` must be a non-empty string.")
        for result in results:
            if not isinstance(result.metric_value, (int, float)) or isinstance(result.metric_value, bool):
                errors.append(f"`model-index`: metric value {result.metric_value!r} is not a number.")
            if result.source_url is not None and not result.source_url.startswith(("http://", "https://")):
                errors.append(f"`model-index`: source url {result.source_url!r} is not a URL.")
    if not errors:
        try:
            ModelCardData(**metadata)
        except ValueError as error:
            errors.append(str(error))
    return errors


class HubStandIn:
    """`with HubStandIn() as hub:` serves on `hub.endpoint` until the block ends or `hub.stop()`. Writes need
    `hub.token`; private repos need it to be read."""

    def __init__(self, token: str = "hf_stand_in_write_token", user: str = "stand-in-user"):
        self.token, self.user = token, user
        self.repos: dict[str, Repo] = {}
        self.lfs_objects: dict[str, bytes] = {}
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> "HubStandIn":
        handler = type("Handler", (_Handler,), {"hub": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop serving (idempotent): later requests fail to connect, as with no network."""
        if self._thread is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._thread = None

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        """Content of every file of `repo_id` at `revision`."""
        commit = self.repos[repo_id].resolve(revision)
        return {path: stored.content for path, stored in commit.files.items()}

    # Endpoint implementations; each returns (status, JSON-able body or bytes, extra headers).

    def _authenticate(self, headers, required: bool) -> bool:
        authorized = headers.get("Authorization") == f"Bearer {self.token}"
        if required and not authorized:
            raise HubError(401, "Invalid credentials in Authorization header")
        return authorized

    def _repo(self, repo_id: str, headers, write: bool = False) -> Repo:
        authorized = self._authenticate(headers, required=write)
        repo = self.repos.get(repo_id)
        if repo is None or (repo.private and not authorized):
            raise HubError(404 if repo is None else 401, "Repository not found", "RepoNotFound")
        return repo

    def _commit(self, repo: Repo, revision: str) -> Commit:
        commit = repo.resolve(unquote(revision))
        if commit is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return commit

    def create_repo(self, request: Request):
        self._authenticate(request.headers, required=True)
        body = request.json
        if body.get("type", "model") != "model":
            raise HubError(400, "The stand-in serves model repos only")
        repo_id = f"{body.get('organization') or self.user}/{body['name']}"
        if repo_id in self.repos:
            raise HubError(409, "You already created this model repo")
        # huggingface_hub >= 2 sends `visibility`, older releases `private`
        repo = Repo(repo_id, private=body.get("visibility") == "private" or body.get("private") is True)
        repo.commit("main", "initial commit", {".gitattributes": StoredFile(GITATTRIBUTES, lfs=False)})
        self.repos[repo_id] = repo
        return 200, {"url": f"{self.endpoint}/{repo_id}", "name": repo_id, "id": repo_id}, {}

    def create_branch(self, request: Request, repo_id: str, branch: str):
        repo = self._repo(repo_id, request.headers, write=True)
        branch = unquote(branch)
        if branch in repo.branches:
            raise HubError(409, f"Reference refs/heads/{branch} already exists")
        repo.branches[branch] = self._commit(repo, request.json.get("startingPoint", "main")).oid
        return 200, {}, {}

    def preupload(self, request: Request, repo_id: str, revision: str):
        repo = self._repo(repo_id, request.headers, write=True)
        current = self._commit(repo, revision).files
        files = []
        for item in request.json["files"]:
            sample = base64.b64decode(item["sample"])
            lfs = item["path"].endswith(LFS_SUFFIXES) or item["size"] >= LFS_MIN_SIZE or b"\x00" in sample
            existing = current.get(item["path"])
            files.append(
                {
                    "path": item["path"],
                    "uploadMode": "lfs" if lfs else "regular",
                    "shouldIgnore": False,
                    "oid": existing.oid if existing is not None else None,
                }
            )
        return 200, {"files": files, "commitOid": self._commit(repo, revision).oid}, {}

    def lfs_batch(self, request: Request, repo_id: str):
        self._repo(repo_id, request.headers, write=True)
        body = request.json
        if body.get("operation") != "upload" or "basic" not in body.get("transfers", ["basic"]):
            raise HubError(400, "The stand-in supports basic LFS uploads only")
        objects = []
        for obj in body["objects"]:
            entry = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if obj["oid"] not in self.lfs_objects:
                entry["actions"] = {
                    "upload": {"href": f"{self.endpoint}/lfs-storage/{obj['oid']}", "header": {}},
                    "verify": {"href": f"{self.endpoint}/{repo_id}.git/info/lfs/objects/verify", "header": {}},
                }
            objects.append(entry)
        return 200, {"transfer": "basic", "objects": objects}, {"Content-Type": "application/vnd.git-lfs+json"}

    def lfs_store(self, request: Request, oid: str):
        content = request.raw
        if hashlib.sha256(content).hexdigest() != oid:
            raise HubError(400, "Uploaded content does not match its sha256 oid")
        self.lfs_objects[oid] = content
        return 200, b"", {}

    def lfs_verify(self, request: Request, repo_id: str):
        self._repo(repo_id, request.headers, write=True)
        body = request.json
        if body["oid"] not in self.lfs_objects or len(self.lfs_objects[body["oid"]]) != body["size"]:
            raise HubError(404, f"LFS object {body['oid']} was not uploaded", "EntryNotFound")
        return 200, {}, {}

    def validate_yaml(self, request: Request):
        body = request.json
        if body.get("repoType", "model") != "model":
            raise HubError(400, "The stand-in validates model cards only")
        errors = metadata_errors(body["content"])
        status = 400 if errors else 200
        return status, {"errors": [{"message": message} for message in errors], "warnings": []}, {}

    def commit(self, request: Request, repo_id: str, revision: str):
        repo = self._repo(repo_id, request.headers, write=True)
        lines = [json.loads(line) for line in request.raw.splitlines() if line.strip()]
        branch = unquote(revision)
        if branch not in repo.branches:
            raise HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
        header, operations = lines[0], lines[1:]
        if header.get("key") != "header" or not header["value"].get("summary"):
            raise HubError(400, "A commit starts with a header line holding a non-empty summary")
        files = dict(repo.resolve(branch).files)
        for operation in operations:
            key, value = operation["key"], operation["value"]
            if key == "file":
                files[value["path"]] = StoredFile(base64.b64decode(value["content"]), lfs=False)
            elif key == "lfsFile":
                if value["oid"] not in self.lfs_objects:
                    raise HubError(422, f"LFS object {value['oid']} of {value['path']} was never uploaded")
                files[value["path"]] = StoredFile(self.lfs_objects[value["oid"]], lfs=True)
            elif key == "deletedFile":
                files.pop(value["path"], None)
            elif key == "deletedFolder":
                files = {p: f for p, f in files.items() if not p.startswith(value["path"].rstrip("/") + "/")}
            else:
                raise HubError(400, f"Unknown commit operation {key!r}")
        commit = repo.commit(branch, header["value"]["summary"], files)
        url = f"{self.endpoint}/{repo_id}/commit/{commit.oid}"
        return 200, {"commitUrl": url, "commitOid": commit.oid, "pullRequestUrl": None, "success": True}, {}

    def repo_info(self, request: Request, repo_id: str, revision: str):
        repo = self._repo(repo_id, request.headers)
        commit = self._commit(repo, revision)
        body = {
            "id": repo_id,
            "modelId": repo_id,
            "author": repo_id.split("/")[0],
            "sha": commit.oid,
            "private": repo.private,
            "siblings": [{"rfilename": path} for path in sorted(commit.files)],
        }
        return 200, body, {}

    def tree(self, request: Request, repo_id: str, revision: str, path: str | None):
        commit = self._commit(self._repo(repo_id, request.headers), revision)
        recursive = request.query.get("recursive", ["False"])[0].lower() in ("1", "true")
        path = (path or "").strip("/")
        prefix = f"{path}/" if path else ""
        files, folders = [], set()
        for file_path, stored in sorted(commit.files.items()):
            if not file_path.startswith(prefix):
                continue
            parts = file_path[len(prefix) :].split("/")
            folders.update(
                prefix + "/".join(parts[:depth]) for depth in range(1, len(parts) if recursive else min(2, len(parts)))
            )
            if recursive or len(parts) == 1:
                entry = {
                    "type": "file",
                    "path": file_path,
                    "size": len(stored.content),
                    "oid": git_hash(stored.content),
                }
                if stored.lfs:
                    entry["lfs"] = {"oid": stored.sha256, "size": len(stored.content), "pointerSize": 134}
                files.append(entry)
        directories = [{"type": "directory", "path": f, "oid": hashlib.sha1(f.encode()).hexdigest()} for f in folders]
        return 200, sorted(directories, key=lambda d: d["path"]) + files, {}

    def resolve(self, request: Request, repo_id: str, revision: str, path: str):
        commit = self._commit(self._repo(repo_id, request.headers), revision)
        stored = commit.files.get(unquote(path))
        if stored is None:
            raise HubError(404, f"{path} does not exist at {revision}", "EntryNotFound")
        extra = {"X-Repo-Commit": commit.oid, "ETag": f'"{git_hash(stored.content)}"'}
        if stored.lfs:
            extra.update({"X-Linked-Etag": f'"{stored.sha256}"', "X-Linked-Size": str(len(stored.content))})
        return 200, stored.content, extra


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the client's connection pool expects
    hub: HubStandIn
    routes = [
        ("POST", r"/api/repos/create", "create_repo"),
        ("POST", rf"/api/models/{REPO_ID}/branch/(?P<branch>[^/]+)", "create_branch"),
        ("POST", rf"/api/models/{REPO_ID}/preupload/(?P<revision>[^/]+)", "preupload"),
        ("POST", rf"/api/models/{REPO_ID}/commit/(?P<revision>[^/]+)", "commit"),
        ("POST", r"/api/validate-yaml", "validate_yaml"),
        ("GET", rf"/api/models/{REPO_ID}/revision/(?P<revision>[^/]+)", "repo_info"),
        ("GET", rf"/api/models/{REPO_ID}/tree/(?P<revision>[^/]+)(?P<path>/.*)?", "tree"),
        ("POST", rf"/{REPO_ID}\.git/info/lfs/objects/batch", "lfs_batch"),
        ("POST", rf"/{REPO_ID}\.git/info/lfs/objects/verify", "lfs_verify"),
        ("PUT", r"/lfs-storage/(?P<oid>[0-9a-f]{64})", "lfs_store"),
        ("GET", rf"/{REPO_ID}/resolve/(?P<revision>[^/]+)/(?P<path>.+)", "resolve"),
        ("HEAD", rf"/{REPO_ID}/resolve/(?P<revision>[^/]+)/(?P<path>.+)", "resolve"),
    ]

    def log_message(self, format, *args) -> None:  # keep pytest output clean
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                chunk = self.rfile.read(size)
                self.rfile.readline()
                if size == 0:
                    return b"".join(chunks)
                chunks.append(chunk)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _dispatch(self) -> None:
        url = urlsplit(self.path)
        raw = self._body()
        self.hub.requests.append((self.command, url.path))
        try:
            for method, pattern, name in self.routes:
                match = re.fullmatch(pattern, url.path)
                if method == self.command and match:
                    request = Request(self.headers, parse_qs(url.query), raw)
                    with self.hub._lock:
                        status, body, headers = getattr(self.hub, name)(request, **match.groupdict())
                    break
            else:
                raise HubError(404, f"The stand-in does not serve {self.command} {url.path}")
        except HubError as error:
            status, body = error.status, {"error": error.message}
            headers = {"X-Error-Message": error.message}
            if error.error_code:
                headers["X-Error-Code"] = error.error_code
        except Exception as error:  # a bug in the stand-in: answer, so the client fails with the reason
            status, body, headers = 500, {"error": f"stand-in failure: {error!r}"}, {}
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        headers.setdefault(
            "Content-Type", "application/octet-stream" if isinstance(body, bytes) else "application/json"
        )
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_HEAD = do_POST = do_PUT = _dispatch
