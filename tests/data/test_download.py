"""bench.data.download: verified, resumable downloads from a local server; safe extraction."""

from __future__ import annotations

import hashlib
import io
import stat
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.core.errors import BenchError
from bench.data.download import DownloadError, download, rebase_url, safe_extract
from tests.helpers.http import FileServer, unused_url

DATA = bytes(range(256)) * 40  # 10240 bytes
SHA256 = hashlib.sha256(DATA).hexdigest()


@pytest.fixture
def file_server(tmp_path: Path) -> Iterator[FileServer]:
    with FileServer(tmp_path / "served") as server:
        yield server


def test_download_verifies_and_keeps_a_verified_file(
    file_server: FileServer, tmp_path: Path
) -> None:
    url = file_server.add("data/file.bin", DATA)
    dest = tmp_path / "out" / "file.bin"
    assert download(url, dest, sha256=SHA256, size=len(DATA), show_progress=False) == dest
    assert dest.read_bytes() == DATA
    assert not dest.with_suffix(".bin.part").exists()
    download(url, dest, sha256=SHA256, show_progress=False)
    assert len(file_server.requests) == 1  # already there and verified: not downloaded again


def test_checksum_failure_names_url_file_and_digests_and_removes_the_file(
    file_server: FileServer, tmp_path: Path
) -> None:
    url = file_server.add("file.bin", DATA)
    dest = tmp_path / "file.bin"
    wrong = "0" * 64
    with pytest.raises(BenchError) as err:
        download(url, dest, sha256=wrong, show_progress=False)
    message = str(err.value)
    for part in (url, str(dest), wrong, SHA256, "deleted"):
        assert part in message
    assert not dest.exists() and not dest.with_suffix(".bin.part").exists()


def test_size_and_sha256_prefix_checks(file_server: FileServer, tmp_path: Path) -> None:
    url = file_server.add("file.bin", DATA)
    with pytest.raises(BenchError, match=f"size: expected 10 bytes, got {len(DATA)}"):
        download(url, tmp_path / "a.bin", size=10, show_progress=False)
    with pytest.raises(BenchError, match="starting abcdef12"):
        download(url, tmp_path / "b.bin", sha256_prefix="abcdef12", show_progress=False)
    assert download(url, tmp_path / "c.bin", sha256_prefix=SHA256[:8], show_progress=False).exists()


def test_git_blob_sha1(file_server: FileServer, tmp_path: Path) -> None:
    url = file_server.add("hello.txt", b"hello\n")
    # `git hash-object` of "hello\n": sha1(b"blob 6\0hello\n")
    good = "ce013625030ba8dba906f756967f9e9ca394464a"
    assert download(url, tmp_path / "hello.txt", git_blob_sha1=good, show_progress=False).exists()
    with pytest.raises(BenchError, match=f"git blob sha1: expected {'1' * 40}, got {good}"):
        download(url, tmp_path / "other.txt", git_blob_sha1="1" * 40, show_progress=False)


def test_interrupted_transfer_resumes_with_range(file_server: FileServer, tmp_path: Path) -> None:
    url = file_server.add("big.bin", DATA)
    dest = tmp_path / "big.bin"
    part = tmp_path / "big.bin.part"
    file_server.drop_after = 3000
    with pytest.raises(DownloadError) as err:
        download(url, dest, sha256=SHA256, show_progress=False)
    assert url in str(err.value) and str(part) in str(err.value) and "resume" in str(err.value)
    assert part.stat().st_size == 3000
    download(url, dest, sha256=SHA256, show_progress=False)
    assert file_server.requests[-1] == ("big.bin", "bytes=3000-")
    assert dest.read_bytes() == DATA and not part.exists()


def test_server_ignoring_range_restarts_from_zero(file_server: FileServer, tmp_path: Path) -> None:
    url = file_server.add("big.bin", DATA)
    dest = tmp_path / "big.bin"
    (tmp_path / "big.bin.part").write_bytes(b"stale bytes that must not be kept")
    file_server.ignore_range = True
    download(url, dest, sha256=SHA256, show_progress=False)
    assert file_server.requests[-1][1] is not None  # Range was asked for, and ignored
    assert dest.read_bytes() == DATA


def test_complete_part_file_is_verified_and_renamed(
    file_server: FileServer, tmp_path: Path
) -> None:
    url = file_server.add("big.bin", DATA)
    (tmp_path / "big.bin.part").write_bytes(DATA)  # server answers 416: nothing left to send
    assert (
        download(url, tmp_path / "big.bin", sha256=SHA256, show_progress=False).read_bytes() == DATA
    )


def test_network_and_http_errors_name_the_url(file_server: FileServer, tmp_path: Path) -> None:
    offline = f"{unused_url()}/x.bin"
    with pytest.raises(DownloadError, match=f"download of {offline} failed"):
        download(offline, tmp_path / "x.bin", show_progress=False)
    missing = f"{file_server.url}/nope.bin"
    with pytest.raises(DownloadError, match="HTTP 404"):
        download(missing, tmp_path / "nope.bin", show_progress=False)


def test_rebase_url_replaces_the_host() -> None:
    url = "https://raw.githubusercontent.com/o/r/abc/a%23b.tif"
    assert rebase_url(url, "http://127.0.0.1:8000") == "http://127.0.0.1:8000/o/r/abc/a%23b.tif"
    assert rebase_url(url, "http://mirror/pre/") == "http://mirror/pre/o/r/abc/a%23b.tif"
    assert rebase_url(url, None) == url


# -- safe_extract ---------------------------------------------------------------------------------


def _zip(path: Path, members: dict[str, bytes], links: dict[str, str] | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        for name, link in (links or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, link)
    return path


def _tar(
    path: Path, members: dict[str, bytes], links: dict[str, tuple[bytes, str]] | None = None
) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for name, (kind, link) in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, link
            tf.addfile(info)
    return path


def test_safe_extract_zip_and_tar(tmp_path: Path) -> None:
    members = {"top/images/a.jpg": b"a", "top/labels/a.png": b"b"}
    for archive in (_zip(tmp_path / "ok.zip", members), _tar(tmp_path / "ok.tar.gz", members)):
        target = tmp_path / archive.name.replace(".", "_")
        paths = safe_extract(archive, target)
        assert sorted(p.relative_to(target).as_posix() for p in paths) == sorted(members)
        assert (target / "top/images/a.jpg").read_bytes() == b"a"


@pytest.mark.parametrize("name", ["../evil.txt", "top/../../evil.txt", "/abs/evil.txt"])
def test_safe_extract_refuses_escaping_members(tmp_path: Path, name: str) -> None:
    for archive in (
        _zip(tmp_path / "bad.zip", {"fine.txt": b"x", name: b"evil"}),
        _tar(tmp_path / "bad.tar.gz", {"fine.txt": b"x", name: b"evil"}),
    ):
        target = tmp_path / "target"
        with pytest.raises(BenchError, match=f"{archive.name}: refusing to extract"):
            safe_extract(archive, target)
        assert not target.exists()  # nothing extracted, not even the harmless member
        assert not [p for p in tmp_path.iterdir() if "extract" in p.name]  # no temporary folder
    assert not (tmp_path / "evil.txt").exists()


def test_safe_extract_refuses_links_pointing_outside(tmp_path: Path) -> None:
    cases = [
        _zip(tmp_path / "sym.zip", {"a.txt": b"x"}, links={"link": "../../etc/passwd"}),
        _tar(
            tmp_path / "sym.tar.gz", {"a.txt": b"x"}, links={"d/link": (tarfile.SYMTYPE, "../../x")}
        ),
        _tar(
            tmp_path / "abs.tar.gz",
            {"a.txt": b"x"},
            links={"link": (tarfile.SYMTYPE, "/etc/passwd")},
        ),
        _tar(
            tmp_path / "hard.tar.gz", {"a.txt": b"x"}, links={"hl": (tarfile.LNKTYPE, "../outside")}
        ),
    ]
    for archive in cases:
        target = tmp_path / f"t_{archive.name}"
        with pytest.raises(BenchError, match=r"refusing to extract: .* is a link"):
            safe_extract(archive, target)
        assert not target.exists()


def test_safe_extract_refuses_every_link_even_inside(tmp_path: Path) -> None:
    for archive in (
        _tar(tmp_path / "in.tar.gz", {"d/a.txt": b"x"}, links={"d/l": (tarfile.SYMTYPE, "a.txt")}),
        _zip(tmp_path / "in.zip", {"d/a.txt": b"x"}, links={"d/l": "a.txt"}),
    ):
        target = tmp_path / f"t_{archive.name}"
        with pytest.raises(BenchError, match=r"'d/l' is a link \(a dataset archive needs none\)"):
            safe_extract(archive, target)
        assert not target.exists()


def test_the_link_chain_zip_writes_nothing_anywhere(tmp_path: Path) -> None:
    """``a -> .``, ``a/b -> ..``, ``a/b/evil.txt``: each check passes on a tree without links,
    and following the links wrote outside the target."""
    (tmp_path / "work" / "deep").mkdir(parents=True)
    archive = tmp_path / "chain.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for name, link in (("a", "."), ("a/b", "..")):
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, link)
        zf.writestr("a/b/evil.txt", b"evil")
    target = tmp_path / "work" / "deep" / "target"
    with pytest.raises(BenchError, match="refusing to extract: 'a' is a link"):
        safe_extract(archive, target)
    assert not list(tmp_path.rglob("evil.txt"))
    assert list((tmp_path / "work" / "deep").iterdir()) == []


def test_a_member_written_twice_or_through_a_file_is_refused(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "clash.tar.gz", {"x": b"1", "x/y": b"2"})
    with pytest.raises(BenchError, match="refusing to extract: 'x/y'"):
        safe_extract(archive, tmp_path / "t")
    assert not (tmp_path / "t").exists()


def test_safe_extract_rejects_non_archives(tmp_path: Path) -> None:
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"this is no archive")
    with pytest.raises(BenchError, match="not a zip or tar archive"):
        safe_extract(junk, tmp_path / "t")
