"""The identity of a wrapped model: its class and every public setting that can change output.

Example::

    identity = model_identity(HuggingFaceEmbeddings(model_name="all-MiniLM-L6-v2",
                                                    encode_kwargs={"normalize_embeddings": True}))
    identity.cls        # 'langchain_huggingface.embeddings.huggingface.HuggingFaceEmbeddings'
    identity.fields     # {'encode_kwargs': {'normalize_embeddings': True},
                        #  'model_name': 'all-MiniLM-L6-v2'}
    identity.fingerprint()   # 16 hex digits, part of every cache key of the wrapper

The rule (docs/components/identity.md), the same for embedding models and LLMs of both
frameworks:

- **Every public field** of the model's declared state counts (pydantic ``model_fields``,
  dataclass fields, else the public instance attributes), not a list of known names: a
  setting nobody listed (``model_kwargs={"truncate_dim": 64}``, a query prompt, a
  ``model_id``) still changes the key.
- **The class counts by its qualified name** (``module.QualName``): a subclass that computes
  different vectors never shares its parent's entries.
- **Fields at their class default are left out**, so a framework release that adds a field
  (at its default) keeps existing keys.
- **Left out**: credentials (any field :func:`rag_perf_plugins._secrets.is_secret_name`
  names, and secret values), and the documented deny-list :data:`NON_IDENTITY_FIELDS` of
  clients, timeouts, retries, callbacks, caches, rate limiters, progress bars and batch
  sizes, which do not change what the model returns. Credentials nested in values (a
  password in a URL, ``api_key`` in a kwargs dict) are masked.
- Values that are not plain data (a client object, a tokenizer) count by their type name.
- A loaded local model kept in a private attribute (a sentence-transformers model) counts
  by its truncation, prompts, maximum sequence length and module stack, which a class may
  set from constructor arguments it does not keep as fields.

:class:`IdentityGuard` watches a model after wrapping: a user who changes a field of the
wrapped model (``inner.encode_kwargs["normalize_embeddings"] = True``) gets new keys from
the next call on, never the old vectors.

Not done: other state a model hides from its fields (a private attribute set in
``__init__`` from an argument it does not keep, such as a model revision) is invisible;
such a class needs the wrapper's ``provider=`` override. :class:`IdentityGuard` watches
the public fields only. A change made while a call is in flight may be stored
under the old key.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import enum
import hashlib
import json
from collections.abc import Mapping
from typing import Any, Final

from .._secrets import is_secret_name, redact_data

__all__ = ["NON_IDENTITY_FIELDS", "IdentityGuard", "ModelIdentity", "model_identity"]

#: Fields that never change what a model returns: transport, retries, callbacks, caches,
#: progress output and batching. Left out of every identity, in both frameworks.
NON_IDENTITY_FIELDS: Final = frozenset(
    {
        # clients and transport
        "async_client",
        "client",
        "http_async_client",
        "http_client",
        "root_async_client",
        "root_client",
        "default_headers",
        "default_query",
        "openai_proxy",
        "anthropic_proxy",
        "reuse_client",
        # time and retries
        "default_request_timeout",  # ChatAnthropic's timeout
        "max_retries",
        "request_timeout",
        "retry_max_seconds",
        "retry_min_seconds",
        "timeout",
        # callbacks, tracing, caching, rate limiting
        "cache",
        "callback_manager",
        "callbacks",
        "custom_get_token_ids",
        "embeddings_cache",
        "metadata",
        "rate_limiter",
        "tags",
        "verbose",
        # progress output and how work is split (same vectors, same answers)
        "chunk_size",
        "embed_batch_size",
        "multi_process",
        "num_workers",
        "show_progress",
        "show_progress_bar",
    }
)

_MISSING: Final[Any] = object()
_PLAIN = (str, int, float, bool, type(None))


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _is_secret_value(value: Any) -> bool:
    # pydantic's SecretStr / SecretBytes and anything built like them.
    return type(value).__name__.startswith("Secret") and hasattr(value, "get_secret_value")


def _declared(model: Any) -> list[tuple[str, Any]]:
    """(name, default) of the model's public declared fields; default ``_MISSING`` if none."""
    cls = type(model)
    fields = getattr(cls, "model_fields", None)
    if isinstance(fields, Mapping):  # pydantic v2
        out = []
        for name, info in fields.items():
            try:
                default = info.get_default(call_default_factory=True)
            except TypeError:  # a factory that takes the validated data
                default = _MISSING
            out.append((name, _MISSING if _is_undefined(default) else default))
        return out
    if dataclasses.is_dataclass(model):
        out = []
        for field in dataclasses.fields(model):
            if field.default is not dataclasses.MISSING:
                default = field.default
            elif field.default_factory is not dataclasses.MISSING:
                default = field.default_factory()
            else:
                default = _MISSING
            out.append((field.name, default))
        return out
    return [(name, _MISSING) for name in sorted(getattr(model, "__dict__", {}))]


def _is_undefined(value: Any) -> bool:
    return type(value).__name__ == "PydanticUndefinedType"


def _counted(name: str, deny: frozenset[str]) -> bool:
    return not name.startswith("_") and name not in deny and not is_secret_name(name)


def _plain(value: Any, depth: int = 0) -> Any:
    """A JSON-safe form of ``value``: plain data kept, objects by their type (or fields)."""
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, _PLAIN):
        return value
    if _is_secret_value(value):
        return "***"
    if depth > 8:
        return {"__type__": _qualified(type(value))}
    if isinstance(value, Mapping):
        return {str(k): _plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, depth + 1) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted((_plain(v, depth + 1) for v in value), key=repr)
    if isinstance(getattr(type(value), "model_fields", None), Mapping) or (
        dataclasses.is_dataclass(value) and not isinstance(value, type)
    ):
        # A settings object inside a model (a pydantic config, a dataclass of options).
        return {"__type__": _qualified(type(value)), **model_identity(value).fields}
    return {"__type__": _qualified(type(value))}


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b) and type(a) is type(b)
    except Exception:  # arrays and other values without a plain truth value
        return a is b


@dataclasses.dataclass(frozen=True)
class ModelIdentity:
    """A model's class and the plain form of its non-default identity fields.

    Example: ``model_identity(model).fingerprint()``; ``ModelIdentity(cls, fields)`` as
    :func:`model_identity` builds it.
    """

    cls: str
    fields: Mapping[str, Any]

    def canonical(self) -> str:
        """The canonical JSON text the fingerprint hashes (sorted keys, no spaces)."""
        return json.dumps(
            {"class": self.cls, "fields": self.fields},
            sort_keys=True,
            separators=(",", ":"),
            default=lambda o: {"__type__": _qualified(type(o))},
        )

    def fingerprint(self) -> str:
        """16 hex digits of blake2b over :meth:`canonical`."""
        return hashlib.blake2b(self.canonical().encode(), digest_size=8).hexdigest()


def _engine_state(value: Any) -> dict[str, Any] | None:
    """The output-deciding state of a loaded local model held in a private attribute.

    Today: a sentence-transformers model (duck-typed: ``encode``, ``prompts``,
    ``truncate_dim``), whose truncation, prompts, sequence length and module stack a
    wrapper class may set from constructor arguments it does not keep as fields
    (LlamaIndex's ``HuggingFaceEmbedding(truncate_dim=64)``).
    """
    if not (
        callable(getattr(value, "encode", None))
        and hasattr(value, "prompts")
        and hasattr(value, "truncate_dim")
    ):
        return None
    try:
        modules = [_qualified(type(module)) for module in value]
    except TypeError:
        modules = []
    return {
        "__type__": _qualified(type(value)),
        "truncate_dim": _plain(value.truncate_dim),
        "prompts": _plain(dict(value.prompts or {})),
        "default_prompt_name": _plain(getattr(value, "default_prompt_name", None)),
        "max_seq_length": _plain(getattr(value, "max_seq_length", None)),
        "modules": modules,
    }


def _private_engines(model: Any) -> dict[str, Any]:
    private = getattr(model, "__pydantic_private__", None)
    if not isinstance(private, Mapping):
        return {}
    found = {}
    for name, value in private.items():
        state = _engine_state(value)
        if state is not None:
            found[name] = state
    return found


def model_identity(model: Any, *, deny: frozenset[str] = frozenset()) -> ModelIdentity:
    """The identity of ``model``: its qualified class and its non-default public fields.

    Example: ``model_identity(OpenAIEmbeddings(model="m", api_key="sk-..."))`` holds the
    class and ``{"model": "m"}`` (the key is a credential, left out).

    Args:
        model: Any object; pydantic models and dataclasses give their declared fields,
            other objects their public instance attributes.
        deny: More field names to leave out, besides :data:`NON_IDENTITY_FIELDS`.
    """
    denied = NON_IDENTITY_FIELDS | deny
    fields: dict[str, Any] = {}
    for name, default in _declared(model):
        if not _counted(name, denied):
            continue
        value = getattr(model, name, _MISSING)
        if value is _MISSING or (default is not _MISSING and _same(value, default)):
            continue
        fields[name] = _plain(value)
    fields.update(_private_engines(model))
    return ModelIdentity(_qualified(type(model)), redact_data(fields))


class IdentityGuard:
    """Notices when a wrapped model's identity fields change after wrapping.

    Example::

        guard = IdentityGuard(inner)
        inner.encode_kwargs["normalize_embeddings"] = True
        guard.changed()      # the new ModelIdentity; None while nothing changed

    The check compares each counted field with a deep copy taken at the last identity (one
    ``==`` per field, no serialization), so it is cheap enough for every call.
    """

    __slots__ = ("_deny", "_model", "_names", "_snapshot", "identity")

    def __init__(self, model: Any, *, deny: frozenset[str] = frozenset()) -> None:
        self._model = model
        self._deny = NON_IDENTITY_FIELDS | deny
        self.identity = model_identity(model, deny=deny)
        # A pydantic model's or a dataclass's fields are its class's: listed once. (Reading
        # them through _declared computes every default, ~20 us a call for a chat model.)
        # Other objects' public attributes may come and go: listed at each snapshot.
        fixed = isinstance(getattr(type(model), "model_fields", None), Mapping) or (
            dataclasses.is_dataclass(model)
        )
        self._names: tuple[str, ...] | None = self._counted_names() if fixed else None
        self._snapshot = self._take()

    def _counted_names(self) -> tuple[str, ...]:
        return tuple(n for n, _ in _declared(self._model) if _counted(n, self._deny))

    def _take(self) -> list[tuple[str, Any]]:
        taken = []
        names = self._names if self._names is not None else self._counted_names()
        for name in names:
            value = getattr(self._model, name, _MISSING)
            if isinstance(value, (Mapping, list, tuple, set)):
                with contextlib.suppress(Exception):  # uncopyable: compared as it is
                    value = copy.deepcopy(value)
            taken.append((name, value))
        return taken

    def changed(self) -> ModelIdentity | None:
        """The new identity if a counted field changed since the last one, else ``None``."""
        model = self._model
        for name, old in self._snapshot:
            new = getattr(model, name, _MISSING)
            if new is old:
                continue
            if not _same(new, old):
                break
        else:
            return None
        fresh = model_identity(model, deny=self._deny - NON_IDENTITY_FIELDS)
        self._snapshot = self._take()
        if fresh == self.identity:
            return None
        self.identity = fresh
        return fresh

    def settle(self) -> None:
        """Accept the model's fields as they are now, keeping the identity (no new keys).

        Called after the model's own call: a field the model changes as it runs (a cursor
        such as LangChain's ``FakeListChatModel.i``) is state, not a user's setting.
        """
        self._snapshot = self._take()

    def __repr__(self) -> str:
        return f"<IdentityGuard {self.identity.cls} {self.identity.fingerprint()}>"
