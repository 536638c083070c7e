"""Pretrained weights by path or URL: ``model.pretrained`` may be ``https://``, ``http://`` or ``file://``.

A URL is downloaded once into the cache (``$POINTDR2_CACHE/weights``, default ``~/.cache/pointdr2/weights``),
with a progress bar, into a temporary file beside its final name that is renamed only when the download is
complete and, if ``model.pretrained_sha256`` is given, its checksum matches. A broken connection or a wrong
checksum leaves nothing in the cache (the error says which). A cached file is checked against the
checksum again before it is used.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from pointdr2.progress import bar as progress_bar

__all__ = ["cache_dir", "resolve_weights", "sha256_of"]

log = logging.getLogger(__name__)

SCHEMES = ("http", "https", "file")
CHUNK = 1 << 20


def cache_dir() -> Path:
    root = os.environ.get("POINTDR2_CACHE")
    return (Path(root).expanduser() if root else Path.home() / ".cache" / "pointdr2") / "weights"


def sha256_of(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _check_sha(sha256: str | None) -> str | None:
    if sha256 is None:
        return None
    sha = str(sha256).strip().lower()
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise ValueError(f"model.pretrained_sha256 must be 64 hexadecimal digits, got {sha256!r}")
    return sha


def resolve_weights(spec: str | os.PathLike, sha256: str | None = None, progress: bool = True) -> Path:
    """A local file for ``model.pretrained``: the path itself, or the cached download of a URL."""
    sha = _check_sha(sha256)
    text = str(spec)
    scheme = urllib.parse.urlparse(text).scheme.lower()
    if scheme not in SCHEMES:
        path = Path(os.path.expanduser(text))
        if not path.is_file():
            raise FileNotFoundError(f"model.pretrained: checkpoint not found: {path}")
        if sha is not None and sha256_of(path) != sha:
            raise ValueError(f"model.pretrained: {path} has sha256 {sha256_of(path)}, model.pretrained_sha256 "
                             f"expects {sha}")
        return path
    name = os.path.basename(urllib.parse.urlparse(text).path) or "weights.pth"
    key = hashlib.sha256(text.encode()).hexdigest()[:16]
    target = cache_dir() / f"{key}-{name}"
    if target.is_file():
        if sha is None or sha256_of(target) == sha:
            log.info("model.pretrained: %s (cached as %s)", text, target)
            return target
        log.warning("cached %s does not match model.pretrained_sha256; downloading it again", target)
    target.parent.mkdir(parents=True, exist_ok=True)
    _download(text, target, sha, progress)
    return target


def _download(url: str, target: Path, sha: str | None, progress: bool) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    h = hashlib.sha256()
    got, total = 0, None
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=60) as resp:  # noqa: S310 - the user's own URL
                    length = resp.headers.get("Content-Length")
                    total = int(length) if length and length.isdigit() else None
                    with progress_bar(total=total, unit="B", unit_scale=True, desc=f"download {target.name}", leave=False,
                                      enabled=progress, every=10.0) as bar:
                        while True:
                            block = resp.read(CHUNK)
                            if not block:
                                break
                            out.write(block)
                            h.update(block)
                            got += len(block)
                            bar.update(len(block))
            except (urllib.error.URLError, OSError, ValueError) as exc:
                reason = getattr(exc, "reason", None) or exc
                raise ValueError(f"model.pretrained: downloading {url} failed after {got} bytes ({reason}); "
                                 "nothing was written to the cache") from None
            if total is not None and got != total:
                raise ValueError(f"model.pretrained: the download of {url} broke off after {got} of {total} bytes; "
                                 "nothing was written to the cache")
            out.flush()
            os.fsync(out.fileno())
        digest = h.hexdigest()
        if sha is not None and digest != sha:
            raise ValueError(f"model.pretrained: {url} has sha256 {digest}, model.pretrained_sha256 expects {sha}; "
                             "the download was not kept")
        os.replace(tmp, target)
        log.info("model.pretrained: downloaded %s (%d bytes, sha256 %s) to %s", url, got, digest, target)
    finally:
        Path(tmp).unlink(missing_ok=True)
