"""A local HTTP file server for download tests: Range support and fault switches, no internet.

Use it as a context manager: ``with FileServer(tmp_path / "served") as server: ...``.
"""

from __future__ import annotations

import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit


class FileServer:
    """Serves the files under ``root`` at ``url`` (http://127.0.0.1:<port>).

    Switches: ``ignore_range`` answers every request with the whole file (200); ``drop_after = n``
    sends the headers of the full response, then only ``n`` body bytes, and closes the connection
    (once: it resets itself). ``requests`` records ``(path, Range header or None)`` per GET.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.ignore_range = False
        self.drop_after: int | None = None
        self.requests: list[tuple[str, str | None]] = []
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.files = self  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()

    def add(self, rel: str, data: bytes) -> str:
        """Serve ``data`` at ``/<rel>``; returns its (percent-encoded) URL."""
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return f"{self.url}/{quote(rel)}"

    def __enter__(self) -> FileServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # http.server's naming
        files: FileServer = self.server.files  # type: ignore[attr-defined]
        rel = unquote(urlsplit(self.path).path).lstrip("/")
        range_header = self.headers.get("Range")
        files.requests.append((rel, range_header))
        path = (files.root / rel).resolve()
        if files.root.resolve() not in path.parents or not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", range_header or "")
        if match and not files.ignore_range:
            start = int(match[1])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        if files.drop_after is not None:
            body, files.drop_after = body[: files.drop_after], None
            self.close_connection = True
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # http.server's signature
        """Quiet."""


def unused_url() -> str:
    """A URL on 127.0.0.1 where nothing listens (connection refused): "offline"."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"
