"""Credentials never reach a screen, a log, a file or an error message: redaction helpers.

Example::

    redact_url("redis://user:s3cret@cache:6379/0")      # "redis://user:***@cache:6379/0"
    redact_url("redis://cache:6379/0?password=s3cret")  # "redis://cache:6379/0?password=***"
    redact_text("failed: redis://:s3cret@cache:6379")    # "failed: redis://:***@cache:6379"
    redact_data({"default_headers": {"Authorization": "Bearer sk-1"}})
    # {"default_headers": {"Authorization": "***"}}
    describe_error(exc)                                  # "ConnectionError: ... redis://:***@..."

Pure functions, no I/O. Every place that prints, logs, stores or raises something that may
hold a credential goes through one of these: ``rag-perf config show``, the benchmark's
metadata, reprs, ``to_dict``/``to_json`` of the wrappers, log lines and error messages.

What counts as a credential: the password of a URL (``scheme://user:PASSWORD@host``, also a
password holding ``@``, ``:`` or ``/``), a userinfo without a colon (``https://TOKEN@host``,
the way tokens are put in URLs), password-like query parameters (``password``, ``token``,
``api_key``, ...), and in structured data every string under a key that names a secret
(``api_key``, ``openai_api_key``, ``Authorization``, ``X-Api-Key``, ``aws_session_token``, ...).

Limitations: in free text (:func:`redact_text`) a URL password containing whitespace is
masked only up to the whitespace (a single URL given to :func:`redact_url` is masked whole).
A bare secret with no URL or key name around it (``"sk-..."`` alone) cannot be recognised:
keep such values out of messages in the first place.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

__all__ = ["MASK", "describe_error", "is_secret_name", "redact_data", "redact_text", "redact_url"]

MASK: Final = "***"

# The userinfo of a URL inside free text: scheme://user:password@ or scheme://token@. The
# password runs to the last "@" before whitespace, so "p@ss", "a:b" and "a/b" are masked
# whole (over-masking a following "@" in the same word is the safe side).
_USERINFO: Final = re.compile(
    r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)"
    r"(?:(?P<user>[^\s:/?#@]*):(?P<pw>\S*)|(?P<token>[^\s:/?#@]+))@"
)
# password-like query parameters
_QUERY: Final = re.compile(
    r"(?P<key>[?&;](?:password|passwd|pwd|secret|token|access_token|api[_-]?key|key|sig"
    r"|signature)=)(?P<value>[^&#;\s]*)",
    re.IGNORECASE,
)
# Names whose values are credentials: api_key, openai_api_key, X-Api-Key, password,
# client_secret, Authorization, aws_secret_access_key, aws_session_token, hf_token, auth...
_SECRET_NAME: Final = re.compile(
    r"(?:^|[_\-\s])(?:api[_\-]?key|apikey|password|passwd|passphrase|pwd|secret"
    r"|secret[_\-]?key|private[_\-]?key|access[_\-]?key(?:[_\-]?id)?|credentials?"
    r"|connection[_\-]?string|authorization|auth|cookie|token)$",
    re.IGNORECASE,
)
# ...but a tokenizer's special tokens are text, not credentials.
_SPECIAL_TOKEN: Final = re.compile(
    r"(?:^|[_\-\s])(?:bos|eos|pad|unk|sep|cls|mask|stop|start|end|eot|special)[_\-]token$",
    re.IGNORECASE,
)


def redact_url(url: str) -> str:
    """``url`` with its password (userinfo or a ``password=`` parameter) replaced by ``***``.

    For one URL, so the userinfo is taken up to its *last* ``@`` (as urllib does):
    ``redis://:p@ss/w@h:6379`` gives ``redis://:***@h:6379``. A userinfo
    without a colon is a token and is masked whole (``https://***@host``); the user name
    before a colon stays. A string that is not a URL but holds an ``@`` (a malformed URL
    such as ``redis:/u:pw@host``) has everything before its last ``@`` masked.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    # The last "@" anywhere, not only in the authority: a raw "/" or "?" in a password
    # cuts the authority short. Masking too much (an "@" in a query) is the safe side.
    at = rest.rfind("@")
    if at != -1:
        user, colon, _password = rest[:at].partition(":")
        shown = f"{user}:{MASK}" if sep and colon else MASK
        rest = f"{shown}@{rest[at + 1 :]}"
    return scheme + sep + _QUERY.sub(lambda m: f"{m['key']}{MASK}", rest)


def redact_text(text: str) -> str:
    """Every URL credential inside ``text`` replaced by ``***`` (the rest unchanged)."""
    if "://" in text:
        text = _USERINFO.sub(_mask_userinfo, text)
    if "=" in text:
        text = _QUERY.sub(lambda m: f"{m['key']}{MASK}", text)
    return text


def _mask_userinfo(m: re.Match[str]) -> str:
    if m["token"] is not None:  # scheme://TOKEN@host
        return f"{m['scheme']}{MASK}@"
    return f"{m['scheme']}{m['user']}:{MASK}@"


def is_secret_name(name: str) -> bool:
    """Whether a field, header or parameter called ``name`` holds a credential.

    Example: ``is_secret_name("openai_api_key")``, ``is_secret_name("Authorization")`` and
    ``is_secret_name("aws_session_token")`` are true; ``is_secret_name("max_tokens")`` and
    ``is_secret_name("eos_token")`` are false.
    """
    return bool(_SECRET_NAME.search(name)) and not _SPECIAL_TOKEN.search(name)


def redact_data(value: Any) -> Any:
    """A copy of JSON-like ``value`` safe to print or store.

    A value under a key that :func:`is_secret_name` (``"api_key": "sk-..."``,
    ``"auth": ("user", "pw")``) becomes ``***``, unless it is ``None`` or a mapping (walked:
    LangChain's secret references ``{"lc": 1, "type": "secret", "id": [...]}`` survive).
    Every other string goes through :func:`redact_text`; mappings, lists and tuples are
    walked (a mapping comes back as a ``dict``, a list as a ``list``, a tuple as a
    ``tuple``); other values are returned as they are.
    """
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        out: dict[Any, Any] = {}
        for key, item in value.items():
            if (
                isinstance(key, str)
                and is_secret_name(key)
                and item is not None
                and not isinstance(item, Mapping)
            ):
                out[key] = MASK
            else:
                out[key] = redact_data(item)
        return out
    if isinstance(value, list):
        return [redact_data(item) for item in value]
    if isinstance(value, tuple):
        return tuple(redact_data(item) for item in value)
    return value


def describe_error(exc: BaseException) -> str:
    """``"TypeName: message"`` of ``exc`` with URL credentials masked, for logs and reports.

    Example: ``log.warning("redis failed (%s)", describe_error(exc))``. Exceptions of
    redis-py, httpx and the SDKs may quote the URL they were given; this is the one way
    their text reaches a log line, an error message or a results file here.
    """
    text = str(exc)
    return f"{type(exc).__name__}: {redact_text(text)}" if text else type(exc).__name__
