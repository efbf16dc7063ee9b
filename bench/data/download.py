"""Verified, resumable HTTP(S) downloads and safe archive extraction (stdlib only, plus rich).

``download`` writes into ``<dest>.part``, resumes it with a ``Range`` request when it exists, checks
size / SHA-256 / git blob SHA-1 / SHA-256 prefix, and renames the file into place only when it
verifies. ``safe_extract`` unpacks .zip / .tar(.gz) archives and refuses any member that would land
outside the target folder.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import os
import shutil
import stat
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import IO, BinaryIO
from urllib.error import HTTPError, URLError
from urllib.parse import urlsplit, urlunsplit
from urllib.request import Request, urlopen

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from bench.core.errors import BenchError

CHUNK = 1 << 16
TIMEOUT_S = 60
USER_AGENT = "microssl-bench"


class DownloadError(BenchError):
    """The transfer itself failed (network or HTTP error); a partial file is kept for resuming."""


@dataclass(frozen=True)
class Expected:
    """What a file must match; fields left as None are not checked."""

    sha256: str | None = None
    git_blob_sha1: str | None = None
    size: int | None = None
    sha256_prefix: str | None = None


def rebase_url(url: str, base_url: str | None) -> str:
    """Replace the scheme and host of ``url`` by those of ``base_url`` (and prefix its path)."""
    if not base_url:
        return url
    base, parts = urlsplit(base_url), urlsplit(url)
    return urlunsplit(
        (base.scheme, base.netloc, base.path.rstrip("/") + parts.path, parts.query, "")
    )


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in _chunks(fh):
            digest.update(chunk)
    return digest.hexdigest()


def verify_file(path: Path, expected: Expected) -> list[str]:
    """Compare ``path`` with ``expected``: one 'what: expected X, got Y' line per mismatch."""
    size = path.stat().st_size
    if expected.size is not None and size != expected.size:
        return [f"size: expected {expected.size} bytes, got {size}"]
    want_sha256 = expected.sha256 or expected.sha256_prefix
    sha256 = hashlib.sha256() if want_sha256 else None
    blob = hashlib.sha1(f"blob {size}\0".encode()) if expected.git_blob_sha1 else None
    if sha256 is None and blob is None:
        return []
    with open(path, "rb") as fh:
        for chunk in _chunks(fh):
            for digest in (sha256, blob):
                if digest is not None:
                    digest.update(chunk)
    problems = []
    if sha256 is not None:
        got = sha256.hexdigest()
        if expected.sha256 and got != expected.sha256.lower():
            problems.append(f"sha256: expected {expected.sha256}, got {got}")
        if expected.sha256_prefix and not got.startswith(expected.sha256_prefix.lower()):
            problems.append(
                f"sha256: expected a digest starting {expected.sha256_prefix}, got {got}"
            )
    if blob is not None and blob.hexdigest() != (expected.git_blob_sha1 or "").lower():
        problems.append(f"git blob sha1: expected {expected.git_blob_sha1}, got {blob.hexdigest()}")
    return problems


def download(
    url: str,
    dest: Path,
    *,
    sha256: str | None = None,
    git_blob_sha1: str | None = None,
    size: int | None = None,
    sha256_prefix: str | None = None,
    show_progress: bool = True,
) -> Path:
    """Download ``url`` to ``dest`` and verify it; a ``dest`` that already verifies is kept as is.

    Raises ``DownloadError`` (a BenchError) when the transfer fails, keeping ``<dest>.part`` for
    the next attempt to resume, and BenchError when the finished file fails verification (it is
    deleted).
    """
    dest = Path(dest)
    expected = Expected(sha256, git_blob_sha1, size, sha256_prefix)
    if dest.is_file():
        if not verify_file(dest, expected):
            return dest
        dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_suffix(dest.suffix + ".part")
    _transfer(url, part, show_progress)
    problems = verify_file(part, expected)
    if problems:
        part.unlink()
        raise BenchError(
            f"{dest}: the file downloaded from {url} is not the expected one "
            f"({'; '.join(problems)}); it was deleted: run the command again to retry, and "
            "report the URL if it keeps failing"
        )
    os.replace(part, dest)
    return dest


def _transfer(url: str, part: Path, show_progress: bool) -> None:
    """Fetch ``url`` into ``part``, appending to it when the server honours Range."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        with urlopen(Request(url, headers=headers), timeout=TIMEOUT_S) as resp:
            if offset and resp.status != 206:
                offset = 0  # the server ignored Range: start again from the first byte
            length = resp.headers.get("Content-Length")
            total = offset + int(length) if length is not None else None
            with open(part, "ab" if offset else "wb") as out:
                _copy(resp, out, total, offset, part.name[: -len(".part")], show_progress)
        if total is not None and part.stat().st_size < total:
            raise _failure(url, part, "the connection closed early")
    except HTTPError as exc:
        if exc.code == 416 and offset:
            return  # nothing left to send: the .part file is complete, verification decides
        raise _failure(url, part, f"HTTP {exc.code} {exc.reason}") from None
    except (URLError, OSError, http.client.HTTPException) as exc:
        raise _failure(url, part, getattr(exc, "reason", None) or exc) from None


def _failure(url: str, part: Path, reason: object) -> DownloadError:
    kept = part.stat().st_size if part.exists() else 0
    if kept:
        advice = f"the partial file {part} ({kept} bytes) is kept: run the command again to resume"
    else:
        advice = "check the connection and the URL, then run the command again"
    return DownloadError(f"download of {url} failed ({reason}); {advice}")


def _copy(
    src: BinaryIO, out: BinaryIO, total: int | None, done: int, label: str, show_progress: bool
) -> None:
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
        disable=not (show_progress and sys.stderr.isatty()),
    )
    with progress:
        task = progress.add_task(label, total=total, completed=done)
        for chunk in _chunks(src):
            out.write(chunk)
            progress.advance(task, len(chunk))


def _chunks(fh: BinaryIO) -> Iterator[bytes]:
    while chunk := fh.read(CHUNK):
        yield chunk


def safe_extract(archive: Path, target: Path) -> list[Path]:
    """Extract a .zip or .tar(.gz/.bz2/.xz) archive into ``target``; returns the extracted paths.

    Only regular files and folders are extracted: a link member of any kind, a device or fifo, an
    absolute path or a ``..`` escape makes it raise BenchError. Members are written by this code
    (never by the archive library) into a temporary sibling of ``target``, each path resolved and
    checked at the moment it is written, and moved into ``target`` only when every member passed:
    a refused archive leaves nothing behind.
    """
    archive, target = Path(archive), Path(target)
    if zipfile.is_zipfile(archive):
        members = _zip_members
    elif tarfile.is_tarfile(archive):
        members = _tar_members
    else:
        raise BenchError(
            f"{archive}: not a zip or tar archive (a corrupt download? delete it and retry)"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-extract-"))
    try:
        written = []
        for name, kind, opener in members(archive):
            path = _inside(stage, name, archive)
            if kind == "dir":
                path.mkdir(parents=True, exist_ok=True)
                continue
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                _inside(stage, str(path.relative_to(stage.resolve())), archive)  # at write time
                with opener() as src, path.open("xb") as dst:
                    shutil.copyfileobj(src, dst)
            except OSError as exc:  # a member twice, a file where a folder is...
                raise BenchError(f"{archive}: refusing to extract: {name!r}: {exc}") from None
            written.append(path.relative_to(stage.resolve()))
        return [_move(stage / rel, target / rel) for rel in written]
    finally:
        shutil.rmtree(stage, ignore_errors=True)


Member = tuple[str, str, Callable[[], IO[bytes]]]
"""(name, ``file`` or ``dir``, open the member's bytes)."""


def _move(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.replace(src, dst)
    return dst


def _inside(target: Path, member: str, archive: Path, what: str = "member") -> Path:
    """``target/member`` resolved, or BenchError when it is absolute or escapes ``target``."""
    root = target.resolve()
    if PurePosixPath(member).is_absolute() or PureWindowsPath(member).anchor:
        raise BenchError(f"{archive}: refusing to extract: {what} {member!r} is an absolute path")
    path = (root / member).resolve()
    if path != root and root not in path.parents:
        raise BenchError(
            f"{archive}: refusing to extract: {what} {member!r} points outside the target folder"
        )
    return path


def _refuse_link(archive: Path, name: str) -> BenchError:
    return BenchError(
        f"{archive}: refusing to extract: {name!r} is a link (a dataset archive needs none)"
    )


def _zip_members(archive: Path) -> Iterator[Member]:
    try:
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
            for info in infos:  # refuse before anything is written
                mode = info.external_attr >> 16
                if stat.S_ISLNK(mode):
                    raise _refuse_link(archive, info.filename)
                fmt = stat.S_IFMT(mode)
                if fmt and fmt not in (stat.S_IFREG, stat.S_IFDIR):
                    raise BenchError(
                        f"{archive}: refusing to extract: {info.filename!r} is not a regular file"
                    )
            for info in infos:
                kind = "dir" if info.is_dir() else "file"
                yield info.filename, kind, partial(zf.open, info)
    except (zipfile.BadZipFile, EOFError) as exc:
        raise BenchError(f"{archive}: corrupt zip archive ({exc}); delete it and retry") from None


def _tar_file(tf: tarfile.TarFile, member: tarfile.TarInfo) -> IO[bytes]:
    return tf.extractfile(member) or io.BytesIO()


def _tar_members(archive: Path) -> Iterator[Member]:
    try:
        with tarfile.open(archive) as tf:
            members = tf.getmembers()
            for m in members:
                if m.issym() or m.islnk():
                    raise _refuse_link(archive, m.name)
                if not (m.isfile() or m.isdir()):
                    raise BenchError(
                        f"{archive}: refusing to extract: {m.name!r} is a device or fifo"
                    )
            for m in members:
                yield m.name, "file" if m.isfile() else "dir", partial(_tar_file, tf, m)
    except (tarfile.TarError, EOFError) as exc:
        raise BenchError(f"{archive}: corrupt tar archive ({exc}); delete it and retry") from None
