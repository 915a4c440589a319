"""Cache keys: a versioned hash of the canonical form of the effective request.

Example::

    key = embedding_key(provider="openai", model="text-embedding-3-small",
                        dimensions=384, role="query", text="What is RAG?")
    # "emb:v1:6f0c..." (40 hex digits of blake2b)
    print(explain_key("emb", embedding_fields(...)).canonical)   # what went in

Canonical form: JSON with sorted keys and no whitespace, built only from None, bool, int,
float, str, lists and str-keyed dicts; integral floats are written as ints (``1.0`` and
``1`` give one key); NaN, infinities, bytes, sets and arbitrary objects are refused with a
``TypeError`` naming the path of the bad field. There is no ``default=str``: an object whose
``str()`` hides what changes the output must not be hashed into a key.

LLM keys take every parameter given except those in :data:`NON_OUTPUT_PARAMS` (timeouts,
retry counts, credentials, transport): an unknown parameter is kept, so a new sampling
option makes keys differ rather than collide. :func:`assert_key_complete` is the helper
tests use to prove that each output-affecting field changes the key.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from json.encoder import encode_basestring as _json_string
from typing import Any, Final, Literal

__all__ = [
    "KEY_VERSION",
    "NON_OUTPUT_PARAMS",
    "KeyExplanation",
    "assert_key_complete",
    "assert_key_ignores",
    "canonical_json",
    "embedding_fields",
    "EmbeddingKeyer",
    "embedding_key",
    "explain_key",
    "is_sampled",
    "llm_fields",
    "llm_key",
    "llm_key_from_tail",
    "llm_key_tail",
    "make_key",
    "query_key",
    "retrieval_key",
]

KEY_VERSION: Final = 1

# Parameters that do not change what the provider returns. Everything else a caller passes
# goes into an LLM key. "stream" is here because only complete answers are stored.
NON_OUTPUT_PARAMS: Final = frozenset(
    {
        "timeout",
        "request_timeout",
        "default_request_timeout",  # ChatAnthropic's
        "max_retries",
        "retries",
        "stream",
        "streaming",
        "stream_options",
        "api_key",
        "openai_api_key",
        "base_url",
        "openai_api_base",
        "api_base",
        "organization",
        "openai_organization",
        "http_client",
        "http_async_client",
        "default_headers",
        "extra_headers",
        "callbacks",
        "tags",
        "metadata",
        "verbose",
        "user",
    }
)

Role = Literal["query", "document"]


def _normalize(value: Any, path: str) -> Any:
    # bool before int: bool is an int subclass, and True must not equal 1 in a key.
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            msg = f"{path}: {value!r} cannot be part of a cache key"
            raise TypeError(msg)
        return int(value) if value.is_integer() and abs(value) < 2**53 else value
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            if not isinstance(k, str):
                msg = f"{path}: dict keys must be str, got {type(k).__name__}"
                raise TypeError(msg)
            out[k] = _normalize(v, f"{path}.{k}")
        return out
    if isinstance(value, list | tuple):
        return [_normalize(v, f"{path}[{i}]") for i, v in enumerate(value)]
    msg = (
        f"{path}: a {type(value).__name__} cannot be part of a cache key "
        "(allowed: None, bool, int, float, str, list, tuple, dict with str keys)"
    )
    raise TypeError(msg)


class _Unusual(Exception):
    """A value :func:`_normalize_plain` leaves to :func:`_normalize` (which names its path)."""


def _normalize_plain(value: Any) -> Any:
    """:func:`_normalize` of values of the exact plain types, without building paths.

    The common case of every key (dicts, lists, str, int, finite floats, bool, None): the
    same result as ``_normalize``. Anything else (a subclass, a non-str dict key, NaN, an
    object) raises :class:`_Unusual` and ``_normalize`` decides, with its error message.
    """
    kind = type(value)
    if kind is str or kind is bool or kind is int or value is None:
        return value
    if kind is float:
        if not math.isfinite(value):
            raise _Unusual
        return int(value) if value.is_integer() and abs(value) < 2**53 else value
    if kind is dict:
        out = {}
        for k, v in value.items():
            if type(k) is not str:
                raise _Unusual
            out[k] = _normalize_plain(v)
        return out
    if kind is list or kind is tuple:
        return [_normalize_plain(v) for v in value]
    raise _Unusual


# json.dumps builds an encoder per call when given options; this one is built once.
_CANONICAL = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)


def canonical_json(value: Any, *, path: str = "key") -> str:
    """The canonical JSON text of ``value``.

    Example: ``canonical_json({"b": 1, "a": 2.0})`` is ``{"a":2,"b":1}``.
    """
    try:
        normalized = _normalize_plain(value)
    except _Unusual:
        normalized = _normalize(value, path)
    return _CANONICAL.encode(normalized)


def _digest(text: str) -> hashlib.blake2b:
    """The hash state of a key's canonical text (blake2b-160, the keys' personalization).

    The one place the digest is defined: :func:`make_key` and the precomputed paths
    (:class:`EmbeddingKeyer`, :func:`llm_key_from_tail`) must write identical keys.
    """
    return hashlib.blake2b(text.encode("utf-8"), digest_size=20, person=b"rag-perf-key")


def _spelled(kind: str, digest: hashlib.blake2b) -> str:
    """A key as it is stored: ``f"{kind}:v{KEY_VERSION}:{hex digest}"``."""
    return f"{kind}:v{KEY_VERSION}:{digest.hexdigest()}"


def make_key(kind: str, fields: Mapping[str, Any]) -> str:
    """``f"{kind}:v{KEY_VERSION}:{blake2b-160 hex}"`` of the canonical fields."""
    return _spelled(kind, _digest(canonical_json(fields)))


@dataclass(frozen=True)
class KeyExplanation:
    """What went into a key: the fields, their canonical text, what was left out."""

    key: str
    kind: str
    fields: dict[str, Any]
    canonical: str
    excluded: tuple[str, ...] = ()

    def __str__(self) -> str:
        lines = [f"{self.key}  ({self.kind}, key version {KEY_VERSION})"]
        lines += [
            f"  {name} = {json.dumps(v, ensure_ascii=False)}"
            for name, v in sorted(self.fields.items())
        ]
        if self.excluded:
            lines.append(f"  excluded (do not change output): {', '.join(self.excluded)}")
        return "\n".join(lines)


def explain_key(
    kind: str, fields: Mapping[str, Any], *, excluded: Iterable[str] = ()
) -> KeyExplanation:
    """Show the inputs of a key.

    Example: ``print(explain_key("emb", embedding_fields(provider="p", model="m", ...)))``.
    """
    normalized = _normalize(fields, "key")
    return KeyExplanation(
        key=make_key(kind, fields),
        kind=kind,
        fields=normalized,
        canonical=canonical_json(fields),
        excluded=tuple(sorted(excluded)),
    )


# --- embeddings ---------------------------------------------------------------------------
def embedding_fields(
    *, provider: str, model: str, dimensions: int | None, role: Role, text: str
) -> dict[str, Any]:
    """The fields of an embedding key; ``role`` is ``"query"`` or ``"document"``."""
    if role not in ("query", "document"):
        msg = f"role must be 'query' or 'document', got {role!r}"
        raise ValueError(msg)
    if not isinstance(text, str):
        msg = f"text must be str, got {type(text).__name__}"
        raise TypeError(msg)
    return {
        "provider": provider,
        "model": model,
        "dimensions": dimensions,
        "role": role,
        "text": text,
    }


def embedding_key(
    *, provider: str, model: str, dimensions: int | None, role: Role, text: str
) -> str:
    """Key of one embedded text.

    Example: ``embedding_key(provider="openai", model="m", dimensions=384, role="document",
    text="hi")``.

    ``dimensions`` is the requested output size (``None`` for the model's native size).
    """
    return make_key(
        "emb",
        embedding_fields(
            provider=provider, model=model, dimensions=dimensions, role=role, text=text
        ),
    )


class EmbeddingKeyer:
    """:func:`embedding_key` for one (provider, model, dimensions, role), text after text.

    Example: ``keyer = EmbeddingKeyer(provider="openai", model="m", dimensions=384,
    role="query")``; ``keyer.key("What is RAG?")`` equals ``embedding_key(...,
    text="What is RAG?")``. The fixed fields are normalized, serialized and fed to the
    hash once; each text then costs one JSON string escape and one copy of that hash state
    (~1 us instead of ~6 us for the whole canonical form), and a text keyed recently costs
    one dict lookup: the keyer remembers up to :data:`MEMO_TEXTS` texts and
    :data:`MEMO_CHARS` characters of them (all forgotten at once past either bound). Safe
    to share between threads: a lookup takes no lock, remembering a new text takes one.
    """

    __slots__ = ("_chars", "_hash", "_lock", "_memo")

    def __init__(self, *, provider: str, model: str, dimensions: int | None, role: Role) -> None:
        fields = embedding_fields(
            provider=provider, model=model, dimensions=dimensions, role=role, text=""
        )
        # "text" sorts last, so the canonical text is this head, the text's JSON and "}".
        head = canonical_json(fields)
        cut = head.rindex(',"text":') + len(',"text":')
        self._hash = _digest(head[:cut])
        self._memo: dict[str, str] = {}
        self._chars = 0
        self._lock = threading.Lock()

    def key(self, text: str) -> str:
        """The key of ``text``; ``TypeError`` when it is not a str."""
        if type(text) is not str:
            if not isinstance(text, str):
                msg = f"text must be str, got {type(text).__name__}"
                raise TypeError(msg)
            return self._computed(text)  # a str subclass may compare equal to other texts
        memo = self._memo
        found = memo.get(text)
        if found is not None:
            return found
        key = self._computed(text)
        if len(text) > MEMO_CHARS:
            return key
        # Bounded memory: the count of characters is read and written under the lock (two
        # threads adding at once would lose one's characters, or count one text twice).
        with self._lock:
            if text in memo:
                return key
            chars = self._chars + len(text)
            if len(memo) >= MEMO_TEXTS or chars > MEMO_CHARS:
                memo.clear()
                chars = len(text)
            memo[text] = key
            self._chars = chars
        return key

    def _computed(self, text: str) -> str:
        digest = self._hash.copy()
        # What json.dumps(text, ensure_ascii=False) writes, without building an encoder.
        digest.update((_json_string(text) + "}").encode("utf-8"))
        return _spelled("emb", digest)


# What one EmbeddingKeyer remembers of the texts it keyed (see EmbeddingKeyer.key): at
# most this many texts, and this many characters of them in all (a few MB at most).
MEMO_TEXTS: Final = 8192
MEMO_CHARS: Final = 2_000_000


# --- LLM ----------------------------------------------------------------------------------
def llm_fields(
    *,
    model: str,
    messages: Any,
    provider: str | None = None,
    params: Mapping[str, Any] | None = None,
    tools: Any = None,
    tool_choice: Any = None,
    response_format: Any = None,
    seed: int | None = None,
) -> tuple[dict[str, Any], tuple[str, ...]]:
    """The fields of an LLM key and the parameter names left out as non-output-affecting."""
    params = dict(params or {})
    excluded = tuple(sorted(k for k in params if k in NON_OUTPUT_PARAMS))
    kept = {k: v for k, v in params.items() if k not in NON_OUTPUT_PARAMS}
    # Explicit keyword arguments win over the same names in params.
    for name, value in (
        ("tools", tools),
        ("tool_choice", tool_choice),
        ("response_format", response_format),
        ("seed", seed),
    ):
        if value is not None or name not in kept:
            kept[name] = value
    fields = {"provider": provider, "model": model, "messages": messages, "params": kept}
    return fields, excluded


def llm_key(
    *,
    model: str,
    messages: Any,
    provider: str | None = None,
    params: Mapping[str, Any] | None = None,
    tools: Any = None,
    tool_choice: Any = None,
    response_format: Any = None,
    seed: int | None = None,
) -> str:
    """Key of one LLM call: model, messages and every output-affecting parameter.

    Example: ``llm_key(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}],
    params={"temperature": 0.0, "max_tokens": 256, "timeout": 30})`` (``timeout`` is left
    out; see :data:`NON_OUTPUT_PARAMS`). Messages and tools must already be plain data
    (dicts/lists/str); adapters convert framework objects first.
    """
    fields, _ = llm_fields(
        model=model,
        messages=messages,
        provider=provider,
        params=params,
        tools=tools,
        tool_choice=tool_choice,
        response_format=response_format,
        seed=seed,
    )
    return make_key("llm", fields)


def llm_key_tail(
    *,
    model: str,
    provider: str | None = None,
    params: Mapping[str, Any] | None = None,
    tools: Any = None,
    tool_choice: Any = None,
    response_format: Any = None,
    seed: int | None = None,
) -> str:
    """The canonical text of an LLM key's fields after ``messages``, to reuse across calls.

    Example: ``tail = llm_key_tail(model="m", params={"temperature": 0})`` once per model,
    then ``llm_key_from_tail(messages, tail)`` per call equals ``llm_key(model="m",
    messages=messages, params={"temperature": 0})``: the fixed fields (model, provider,
    parameters, tools) are normalized and serialized once instead of at every call.
    Raises ``TypeError`` as :func:`llm_key` does for a field that cannot be in a key.
    """
    fields, _ = llm_fields(
        model=model,
        messages=None,
        provider=provider,
        params=params,
        tools=tools,
        tool_choice=tool_choice,
        response_format=response_format,
        seed=seed,
    )
    # Sorted keys: messages < model < params < provider, so everything after "messages"
    # is one fixed text (json.dumps with sort_keys writes the same characters).
    return (
        "".join(
            f',"{name}":{canonical_json(fields[name], path=f"key.{name}")}'
            for name in ("model", "params", "provider")
        )
        + "}"
    )


def llm_key_from_tail(messages: Any, tail: str) -> str:
    """:func:`llm_key` of ``messages`` and the fields :func:`llm_key_tail` serialized."""
    return _spelled(
        "llm", _digest('{"messages":' + canonical_json(messages, path="key.messages") + tail)
    )


def is_sampled(params: Mapping[str, Any]) -> bool:
    """True for a call that samples: temperature above 0 (or unset) and no seed.

    An unset temperature counts as sampled because providers default to 1.0. Used with
    ``cache_skip_sampled``.
    """
    temperature = params.get("temperature", 1.0)
    return (temperature is None or float(temperature) > 0.0) and params.get("seed") is None


# --- retrieval and query ------------------------------------------------------------------
def retrieval_key(
    *, store: str, query: str, k: int, filters: Any = None, store_version: Any = None, **params: Any
) -> str:
    """Key of a retrieval: store identity and write version, query, k, filters, extra params."""
    return make_key(
        "ret",
        {
            "store": store,
            "store_version": store_version,
            "query": query,
            "k": k,
            "filters": filters,
            "params": params,
        },
    )


def query_key(*, pipeline: str, query: str, **params: Any) -> str:
    """Key of a whole RAG query result: pipeline identity (include its version), query, params."""
    return make_key("qry", {"pipeline": pipeline, "query": query, "params": params})


# --- test helpers -------------------------------------------------------------------------
def assert_key_complete(
    key_fn: Callable[..., str], base: Mapping[str, Any], variations: Mapping[str, Sequence[Any]]
) -> None:
    """Fail when changing any listed field leaves the key unchanged.

    Example (a must-miss test)::

        assert_key_complete(embedding_key, base, {"model": ["other"], "dimensions": [256],
                                                  "role": ["query"]})

    ``variations`` maps a keyword of ``key_fn`` to other values it can take; a dotted name
    (``"params.temperature"``) changes an entry inside a dict argument. Raises
    ``AssertionError`` naming the field and value that did not change the key.
    """
    reference = key_fn(**base)
    for field_name, values in variations.items():
        for value in values:
            changed = _with_field(base, field_name, value)
            if key_fn(**changed) == reference:
                msg = (
                    f"key ignores output-affecting field {field_name!r} "
                    f"(value {value!r} gave the same key)"
                )
                raise AssertionError(msg)


def assert_key_ignores(
    key_fn: Callable[..., str], base: Mapping[str, Any], variations: Mapping[str, Sequence[Any]]
) -> None:
    """Fail when changing a listed field that must NOT matter (e.g. a timeout) changes the key."""
    reference = key_fn(**base)
    for field_name, values in variations.items():
        for value in values:
            if key_fn(**_with_field(base, field_name, value)) != reference:
                msg = f"key depends on non-output field {field_name!r} (value {value!r})"
                raise AssertionError(msg)


def _with_field(base: Mapping[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    head, _, rest = dotted.partition(".")
    out = dict(base)
    if rest:
        out[head] = _with_field(dict(base.get(head) or {}), rest, value)
    else:
        out[head] = value
    return out
