"""Redis key names, one builder for every Redis user, laid out for Redis Cluster.

Example::

    keys = RedisKeys("my-app")
    keys.value("llm:1:ab12")          # "my-app:c:{llm:1:ab12}"
    keys.lease("llm:1:ab12")          # "my-app:l:{llm:1:ab12}"  (same slot as its value)
    keys.budget("openai/gpt-4o/k-3f") # "my-app:rl:{openai/gpt-4o/k-3f}"
    keys.part("cb", "openai/gpt-4o", "state")   # "my-app:cb:{openai/gpt-4o}:state"

Redis Cluster maps a key to one of 16384 slots by the CRC16 of its *hash tag*, the text
between the first ``{`` and the next ``}``. Every key built here carries the name of the
logical object it belongs to as its hash tag, so all keys of one object (a cache entry and
its lease; the fields of one budget, breaker or cost record, built with :meth:`part`) land
in one slot, and a Lua script or ``MULTI`` over them is allowed in a cluster. Keys of
different objects spread over the slots (and the masters). The same names are used in
standalone and Sentinel mode, where hash tags are ordinary characters.

Layout (``P`` the prefix, ``cache_namespace_prefix``)::

    P:c:{K}             cache entry K (envelope bytes)       RedisTier
    P:l:{K}             single-flight lease of K             RedisTier.try_lease
    P:tag:{T}           set of keys stored with tag T        RedisTier.purge_tag
    P:rl:{G}            GCRA state of gate key G             RedisBudgetStore
    P:KIND:{NAME}[:PART] any other object: one slot per NAME  (breakers, costs...)

A prefix may not contain ``{`` or ``}`` (it would become the hash tag of every key and put
everything in one slot).
"""

from __future__ import annotations

__all__ = ["RedisKeys"]


class RedisKeys:
    """Key builder of one prefix; see the module docstring for the layout.

    Example: ``RedisKeys("app").budget("openai/gpt-4o-mini/k-1")`` is
    ``"app:rl:{openai/gpt-4o-mini/k-1}"``.
    """

    __slots__ = ("prefix",)

    def __init__(self, prefix: str) -> None:
        if not isinstance(prefix, str) or not prefix or any(c in prefix for c in " \r\n{}"):
            msg = f"prefix must be a non-empty string without spaces, '{{' or '}}', got {prefix!r}"
            raise ValueError(msg)
        self.prefix = prefix

    def part(self, kind: str, name: str, *parts: str) -> str:
        """``P:kind:{name}[:part...]``: every key of object ``name`` in one cluster slot."""
        tail = "".join(":" + p for p in parts)
        return f"{self.prefix}:{kind}:{{{name}}}{tail}"

    def value(self, key: str) -> str:
        """Where the cache tier stores entry ``key``."""
        return self.part("c", key)

    def lease(self, key: str) -> str:
        """The single-flight lease of cache entry ``key`` (the slot of :meth:`value`)."""
        return self.part("l", key)

    def tag(self, tag: str) -> str:
        """The set of cache keys stored with ``tag`` (a model name)."""
        return self.part("tag", tag)

    def budget(self, gate_key: str) -> str:
        """The shared rate budget (GCRA state) of one gate key."""
        return self.part("rl", gate_key)

    def kind_pattern(self, kind: str) -> str:
        """A ``SCAN MATCH`` pattern of every key of ``kind`` (glob characters escaped)."""
        return _glob_escape(f"{self.prefix}:{kind}:") + "*"

    def __repr__(self) -> str:
        return f"RedisKeys({self.prefix!r})"


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "\\*?[]" else c for c in text)
