"""Database and storage URLs as they may be shown: never with their password."""

from __future__ import annotations

MASK = "***"


def mask_password(url: str) -> str:
    """``url`` with any password replaced by ``***``, whatever the input.

    The credentials are everything before the last ``@`` (after ``scheme://``); everything in
    them after the first ``:`` is masked. Parsing never fails, so a password (even one holding
    ``@``, ``:`` or ``[``) is never returned; at worst more than the password is masked.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    credentials, at, host = rest.rpartition("@")
    if not at or ":" not in credentials:
        return url
    user = credentials.split(":", 1)[0]
    return f"{scheme}{sep}{user}:{MASK}@{host}"
