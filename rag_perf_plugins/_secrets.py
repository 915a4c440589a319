"""Credentials never reach a screen, a log, a file or an error message: redaction helpers.

Example::

    redact_url("redis://user:s3cret@cache:6379/0")      # "redis://user:***@cache:6379/0"
    redact_url("redis://cache:6379/0?password=s3cret")  # "redis://cache:6379/0?password=***"
    redact_text("failed: redis://:s3cret@cache:6379")    # "failed: redis://:***@cache:6379"

Pure functions, no I/O. Used wherever a URL or a config value may be printed: ``rag-perf
config show``, the benchmark's metadata, reprs, log lines and error messages.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["MASK", "redact_text", "redact_url"]

MASK: Final = "***"
# userinfo password in any scheme://user:password@host URL
_USERINFO: Final = re.compile(
    r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^:/@\s]*):(?P<pw>[^@\s/]*)@"
)
# password-like query parameters
_QUERY: Final = re.compile(
    r"(?P<key>[?&](?:password|passwd|pwd|secret|token|api[_-]?key)=)(?P<value>[^&#\s]*)",
    re.IGNORECASE,
)


def redact_url(url: str) -> str:
    """``url`` with its password (userinfo or a ``password=`` parameter) replaced by ``***``."""
    return redact_text(url)


def redact_text(text: str) -> str:
    """Every URL password inside ``text`` replaced by ``***`` (the rest unchanged)."""
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)
    return _QUERY.sub(lambda m: f"{m['key']}{MASK}", text)
