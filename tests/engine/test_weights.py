"""model.pretrained by URL: a real HTTP server on the loopback address, broken connections, checksums."""

from __future__ import annotations

import hashlib
import http.server
import threading

import pytest
from engine_tiny import blobs_fn, engine_config, tiny_transformer_overrides

from pointdr2.engine.trainer import train
from pointdr2.engine.weights import cache_dir, resolve_weights


class _Handler(http.server.BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    hits: dict[str, int] = {}

    def do_GET(self):  # noqa: N802 - http.server's name
        name = self.path.lstrip("/")
        self.hits[name] = self.hits.get(name, 0) + 1
        data = self.files.get(name.replace("broken-", ""))
        if data is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        # a "broken-" file announces its full length and then the connection drops half-way
        self.wfile.write(data[: len(data) // 2] if name.startswith("broken-") else data)

    def log_message(self, *args):
        pass


@pytest.fixture()
def server(tmp_path, monkeypatch):
    monkeypatch.setenv("POINTDR2_CACHE", str(tmp_path / "cache"))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    _Handler.files, _Handler.hits = {}, {}
    yield f"http://127.0.0.1:{httpd.server_address[1]}", _Handler
    httpd.shutdown()
    httpd.server_close()


def _cache_files():
    return sorted(p.name for p in cache_dir().iterdir()) if cache_dir().is_dir() else []


def test_download_once_checksum_and_cache(server):
    url, handler = server
    handler.files["w.pth"] = payload = bytes(range(256)) * 5000
    sha = hashlib.sha256(payload).hexdigest()
    first = resolve_weights(f"{url}/w.pth", sha, progress=False)
    assert first.read_bytes() == payload and first.parent == cache_dir()
    again = resolve_weights(f"{url}/w.pth", sha, progress=False)
    assert again == first and handler.hits["w.pth"] == 1  # the second call is served from the cache
    assert _cache_files() == [first.name]  # no temporary file left behind


def test_wrong_checksum_and_broken_connection_leave_nothing(server):
    url, handler = server
    handler.files["w.pth"] = b"x" * 300_000
    with pytest.raises(ValueError, match="sha256 .* expects 0{64}; the download was not kept"):
        resolve_weights(f"{url}/w.pth", "0" * 64, progress=False)
    with pytest.raises(ValueError, match="broke off after 150000 of 300000 bytes|failed after"):
        resolve_weights(f"{url}/broken-w.pth", progress=False)
    with pytest.raises(ValueError, match="failed after 0 bytes"):
        resolve_weights(f"{url}/missing.pth", progress=False)
    assert _cache_files() == []
    with pytest.raises(ValueError, match="64 hexadecimal digits"):
        resolve_weights(f"{url}/w.pth", "abc", progress=False)


def test_file_url_and_model_pretrained_url_in_training(server, tmp_path):
    url, handler = server
    first = tmp_path / "first"
    train(engine_config(first, *tiny_transformer_overrides(), "train.epochs=1", "finetune.mode=conventional"),
          dataset_fn=blobs_fn())
    weights = (first / "best.pth").read_bytes()
    assert resolve_weights((first / "best.pth").as_uri(), progress=False).read_bytes() == weights
    handler.files["best.pth"] = weights
    second = tmp_path / "second"
    train(engine_config(second, *tiny_transformer_overrides(), "train.epochs=1", "finetune.mode=conventional",
                        f"+model.pretrained={url}/best.pth",
                        f"+model.pretrained_sha256={hashlib.sha256(weights).hexdigest()}"), dataset_fn=blobs_fn())
    assert handler.hits["best.pth"] == 1
    cached = [n for n in _cache_files() if n.endswith("-best.pth")]
    assert len(cached) == 2 and all((cache_dir() / n).read_bytes() == weights for n in cached)  # file:// and http
