"""A Hugging Face Hub stand-in on 127.0.0.1, speaking the endpoints `huggingface_hub`'s
`snapshot_download` uses (reached through ``HF_ENDPOINT``): repo info and the file tree at a
revision, and
HEAD/GET of ``/{repo}/resolve/{revision}/{file}`` with the commit, ETag (git blob SHA-1,
or the SHA-256 of an LFS file) and size headers, byte ranges for resumed downloads, and the
Hub's error codes for a missing repository or revision and a gated one. Faults: a file can
be cut off after N bytes for its first K requests (an interrupted download)."""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".msgpack", ".h5")


@dataclass
class Repo:
    commits: dict[str, dict[str, bytes]]  # commit sha -> {path: content}
    refs: dict[str, str]  # branch -> commit
    gated: bool = False


@dataclass
class Hub:
    repos: dict[str, Repo] = field(default_factory=dict)
    cuts: dict[str, list[int]] = field(default_factory=dict)  # file -> [bytes, times left]
    requests: list[str] = field(default_factory=list)
    garbled: set[str] = field(default_factory=set)  # "repo/file" sent with one byte changed

    def add(self, repo_id: str, *commits: dict[str, bytes], gated: bool = False) -> list[str]:
        """A repository whose commits are the file sets given, oldest first; main is the
        last. Returns the commit shas."""
        shas = [hashlib.sha1(f"{repo_id}:{i}".encode()).hexdigest()
                for i in range(len(commits))]
        self.repos[repo_id] = Repo(dict(zip(shas, commits, strict=True)), {"main": shas[-1]},
                                   gated)
        return shas

    def start(self) -> tuple[ThreadingHTTPServer, str]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_HEAD(self):
                hub.serve(self, body=False)

            def do_GET(self):
                hub.serve(self, body=True)

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server, f"http://127.0.0.1:{server.server_address[1]}"

    def _error(self, h, status: int, code: str, message: str) -> None:
        body = json.dumps({"error": message}).encode()
        h.send_response(status)
        h.send_header("X-Error-Code", code)
        h.send_header("X-Error-Message", message)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def _find(self, h, repo_id: str, revision: str):
        repo = self.repos.get(repo_id)
        if repo is None:
            self._error(h, 404, "RepoNotFound", "Repository not found")
            return None, None
        commit = repo.refs.get(revision, revision)
        if commit not in repo.commits:
            self._error(h, 404, "RevisionNotFound", f"Invalid rev id: {revision}")
            return None, None
        return repo, commit

    def serve(self, h, body: bool) -> None:
        path = h.path.split("?", 1)[0]
        self.requests.append(f"{h.command} {path}" + (f" {h.headers['Range']}"
                                                       if h.headers.get("Range") else ""))
        m = re.fullmatch(r"/api/models/(.+)/revision/([^/]+)", path)
        if m:
            repo, commit = self._find(h, m[1], m[2])
            if repo is None:
                return
            info = {"id": m[1], "modelId": m[1], "sha": commit, "private": False,
                    "gated": "manual" if repo.gated else False, "disabled": False,
                    "tags": [], "siblings": [{"rfilename": f} for f in repo.commits[commit]]}
            return self._json(h, info, body)
        m = re.fullmatch(r"/api/models/(.+)/tree/([^/]+)", path)
        if m:  # the file listing huggingface_hub 1.x and later download from
            repo, commit = self._find(h, m[1], m[2])
            if repo is None:
                return
            return self._json(h, [self._tree_entry(name, content) for name, content
                                  in sorted(repo.commits[commit].items())], body)
        m = re.fullmatch(r"/(.+)/resolve/([^/]+)/(.+)", path)
        if not m:
            return self._error(h, 404, "EntryNotFound", f"no route {path}")
        repo, commit = self._find(h, m[1], m[2])
        if repo is None:
            return
        if repo.gated and "authorization" not in {k.lower() for k in h.headers}:
            return self._error(h, 401, "GatedRepo", f"Access to model {m[1]} is restricted. "
                               "You must have access to it and be authenticated to access it.")
        content = repo.commits[commit].get(m[3])
        if content is None:
            return self._error(h, 404, "EntryNotFound", f"{m[3]} does not exist")
        if f"{m[1]}/{m[3]}" in self.garbled:  # a broken mirror: same headers, other bytes
            content = content[:-1] + bytes([content[-1] ^ 1])
            self._send_file(h, m[3], commit, content, body,
                            true=repo.commits[commit][m[3]])
            return
        self._send_file(h, m[3], commit, content, body)

    @staticmethod
    def _json(h, doc, body: bool) -> None:
        data = json.dumps(doc).encode()
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if body:
            h.wfile.write(data)

    @staticmethod
    def _tree_entry(name: str, content: bytes) -> dict:
        blob = hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()
        entry = {"type": "file", "path": name, "size": len(content), "oid": blob}
        if name.endswith(LFS_SUFFIXES):
            entry["lfs"] = {"oid": hashlib.sha256(content).hexdigest(), "size": len(content),
                            "pointerSize": 134}
        return entry

    def _send_file(self, h, name: str, commit: str, content: bytes, body: bool,
                   true: bytes | None = None) -> None:
        """Send ``content``; its hashes in the headers are those of ``true`` if given."""
        true = content if true is None else true
        start = 0
        rng = re.fullmatch(r"bytes=(\d+)-", h.headers.get("Range", ""))
        if rng and body:
            start = int(rng[1])
        h.send_response(206 if start else 200)
        h.send_header("X-Repo-Commit", commit)
        if name.endswith(LFS_SUFFIXES):
            h.send_header("X-Linked-Etag", f'"{hashlib.sha256(true).hexdigest()}"')
            h.send_header("X-Linked-Size", str(len(content)))
        blob = hashlib.sha1(b"blob %d\0" % len(true) + true).hexdigest()
        h.send_header("ETag", f'"{blob}"')
        h.send_header("Accept-Ranges", "bytes")
        h.send_header("Content-Length", str(len(content) - start))
        if start:
            h.send_header("Content-Range", f"bytes {start}-{len(content) - 1}/{len(content)}")
        h.end_headers()
        if not body:
            return
        cut = self.cuts.get(name)
        if cut and cut[1] > 0:  # an interrupted download: the connection drops mid-file
            cut[1] -= 1
            h.wfile.write(content[start:start + cut[0]])
            h.wfile.flush()
            h.close_connection = True
            return
        h.wfile.write(content[start:])


def florence_base_layout(model_dir: Path) -> dict[str, bytes]:
    """The files of a native Florence-2 repository (florence-community/Florence-2-base's
    layout: weights, configs, processor and tokenizer files, README, .gitattributes), here
    with the tiny model's random weights."""
    files = {p.name: p.read_bytes() for p in sorted(model_dir.iterdir()) if p.is_file()}
    files["README.md"] = b"---\nlicense: mit\npipeline_tag: image-text-to-text\n---\n"
    files[".gitattributes"] = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
    files.setdefault("generation_config.json", b'{"num_beams": 3}\n')
    return files
