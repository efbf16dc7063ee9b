"""Per-file derived values (content digests, thumbnails) cached by path + size + mtime.

A value is recomputed when its file's resolved path, size or modification time changes. The cache
lives in ``<cache dir>/data`` (``$BENCH_CACHE_DIR``, see ``bench.core.paths``); an unreadable or
unwritable cache only costs the recomputation, never a result.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bench.core.paths import default_cache_dir

_MEMO: dict[str, object] = {}


def file_key(path: Path, *extra: object) -> str:
    """A digest of the file's identity (resolved path, size, mtime) and ``extra``."""
    stat = path.stat()
    text = "|".join(map(str, (path.resolve(), stat.st_size, stat.st_mtime_ns, *extra)))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _folder(kind: str) -> Path:
    return default_cache_dir() / "data" / kind


def cached_array(
    path: Path, kind: str, compute: Callable[[Path], np.ndarray], *extra: object
) -> np.ndarray:
    """``compute(path)``, cached as ``.npy`` under the file's key."""
    key = f"{kind}/{file_key(path, *extra)}"
    if key in _MEMO:
        return _MEMO[key]  # type: ignore[return-value]
    target = _folder(kind) / f"{key.split('/')[1]}.npy"
    try:
        value = np.load(target, allow_pickle=False)
    except (OSError, ValueError):
        value = compute(path)
        _write_atomic(target, value)
    _MEMO[key] = value
    return value


def file_digest(path: Path) -> str:
    """The SHA-256 of the file's bytes (cached by path + size + mtime)."""
    key = f"sha256/{file_key(path)}"
    if key in _MEMO:
        return str(_MEMO[key])
    target = _folder("sha256") / f"{key.split('/')[1]}.txt"
    try:
        digest = target.read_text().strip()
        if len(digest) != 64:
            raise ValueError(target)
    except (OSError, ValueError):
        sha = hashlib.sha256()
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                sha.update(block)
        digest = sha.hexdigest()
        _write_atomic(target, digest)
    _MEMO[key] = digest
    return digest


def files_digest(named: list[tuple[str, Path]]) -> str:
    """One digest over (name, content digest) pairs, in order."""
    sha = hashlib.sha256()
    for name, path in named:
        sha.update(f"{name}\0{file_digest(path)}\n".encode())
    return sha.hexdigest()[:16]


def _write_atomic(target: Path, value: np.ndarray | str) -> None:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            if isinstance(value, str):
                fh.write(value.encode())
            else:
                np.save(fh, value, allow_pickle=False)
        os.replace(tmp, target)
    except OSError:
        pass  # an unwritable cache only costs the recomputation next time
