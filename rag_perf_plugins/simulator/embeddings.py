"""Deterministic embeddings in which texts that share words are close, so retrieval works.

Example::

    embedder = Embedder(default_dim=1536)
    vectors = embedder.embed("text-embedding-3-small", ["cats purr", "a cat purrs"])
    float(vectors[0] @ vectors[1])      # about 0.9: they share "cat" and "purr"
    vectors.shape                        # (2, 1536), float32, unit length

How: each word (lower-cased, a trailing plural "s" dropped) is hashed to two rows of a
fixed random table, with signs; a text is the weighted sum of its words' rows, normalised.
Common English words weigh a tenth of the others, so "what is the" does not make every
question look alike. The table depends only on the model name and is built once per
process (4096 rows; 24 MiB at 1536 dimensions), so per-request work is a gather and a sum.
A shortened vector (``dimensions=``) is the normalised prefix of the full one, as with
OpenAI's text-embedding-3 models.

Not done: meaning. Synonyms are as far apart as unrelated words; only shared words count.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import math
import re
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from ..tokens import estimate_tokens

__all__ = [
    "KNOWN_MODELS",
    "STOP_WORDS",
    "Embedder",
    "EmbeddingInputError",
    "content_words",
    "token_ids_as_text",
]

# model -> native dimension, and whether it accepts a `dimensions` parameter.
KNOWN_MODELS: dict[str, tuple[int, bool]] = {
    "text-embedding-3-small": (1536, True),
    "text-embedding-3-large": (3072, True),
    "text-embedding-ada-002": (1536, False),
}

_ROWS = 4096
_STOP_WEIGHT = 0.1
_WORD = re.compile(r"[^\W_]+")
_STOP_TEXT = """a about above after again all also am an and any are as at be because been before
    being below between both but by can could did do does doing down during each few for
    from further had has have having he her here hers him his how i if in into is it its
    just me more most my no nor not now of off on once only or other our ours out over own
    same she should so some such than that the their theirs them then there these they this
    those through to too under until up very was we were what when where which while who
    whom why will with would you your yours"""
STOP_WORDS = frozenset(_STOP_TEXT.split())

Vector = npt.NDArray[np.float32]


class EmbeddingInputError(ValueError):
    """The request's input or dimensions cannot be embedded (the server answers 400)."""


def _stem(word: str) -> str:
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def content_words(text: str) -> list[str]:
    """Lower-cased, crudely singularised words of ``text``, common English words removed."""
    return [_stem(w) for w in _WORD.findall(text.lower()) if w not in STOP_WORDS]


@functools.lru_cache(maxsize=8)
def _table(model: str, dim: int) -> Vector:
    # One fixed random table per model: the same text gets the same vector in every process.
    seed = int.from_bytes(hashlib.blake2b(model.encode(), digest_size=8).digest(), "little")
    rng = np.random.default_rng(seed)
    return rng.standard_normal((_ROWS, dim), dtype=np.float32)


@functools.lru_cache(maxsize=65_536)
def _slots(word: str) -> tuple[int, int, float, float]:
    # Two rows with signs per word: a word shares a whole vector with another only when
    # both hashes collide (about 1 in 67 million pairs).
    h = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")
    row1, row2 = h % _ROWS, (h >> 16) % _ROWS
    sign1 = 1.0 if (h >> 32) & 1 else -1.0
    sign2 = 1.0 if (h >> 33) & 1 else -1.0
    return row1, row2, sign1, sign2


@functools.lru_cache(maxsize=65_536)
def _word_terms(raw: str) -> tuple[int, int, float, float]:
    # A lower-cased word's two rows and signed weights, stop-word weight and stem applied.
    weight = _STOP_WEIGHT if raw in STOP_WORDS else 1.0
    row1, row2, sign1, sign2 = _slots(_stem(raw))
    return row1, row2, sign1 * weight, sign2 * weight


def _weighted_words(text: str) -> tuple[list[int], list[float]]:
    terms = [_word_terms(raw) for raw in _WORD.findall(text.lower())]
    if not terms:
        # No word at all ("", "!!!"): still a fixed, distinct unit vector per text.
        terms = [_slots("\x00" + text)]
    rows = [r for t in terms for r in t[:2]]
    weights = [w for t in terms for w in t[2:]]
    return rows, weights


class _Entry:
    """A computed vector, its input tokens, and its JSON encodings once asked for."""

    __slots__ = ("_base64", "_floats", "tokens", "vector")

    def __init__(self, vector: Vector, tokens: int) -> None:
        self.vector = vector
        self.tokens = tokens
        self._base64: bytes | None = None
        self._floats: bytes | None = None

    def base64_json(self) -> bytes:
        if self._base64 is None:
            raw = self.vector.astype("<f4", copy=False).tobytes()
            self._base64 = b'"' + base64.b64encode(raw) + b'"'
        return self._base64

    def float_json(self) -> bytes:
        if self._floats is None:
            self._floats = json.dumps(self.vector.tolist(), separators=(",", ":")).encode()
        return self._floats


class Embedder:
    """Computes (and remembers recent) embedding vectors; pure CPU, no I/O.

    Example::

        embedder = Embedder(default_dim=8)
        embedder.dimension_for("my-local-model", None)          # 8
        embedder.dimension_for("text-embedding-3-large", 256)   # 256
        vectors, tokens = embedder.embed_with_usage("text-embedding-3-small", ["hi"])

    Remembers the last ``cache_size`` vectors (and their JSON forms) by (model, dimension,
    input), so a benchmark that embeds the same texts again does not measure the simulator.
    Not thread-safe: the simulator calls it from its event-loop thread.
    """

    __slots__ = ("_cache", "_cache_size", "default_dim")

    def __init__(self, *, default_dim: int = 1536, cache_size: int = 2048) -> None:
        self.default_dim = default_dim
        self._cache_size = cache_size
        self._cache: OrderedDict[tuple[str, int, str | tuple[int, ...]], _Entry] = OrderedDict()

    def dimension_for(self, model: str, dimensions: int | None) -> int:
        """The output size for ``model`` given the request's ``dimensions`` (or ``None``).

        Raises:
            EmbeddingInputError: ``dimensions`` is not an integer in [1, native size], or the
                model does not accept it (text-embedding-ada-002).
        """
        native, shortenable = KNOWN_MODELS.get(model, (self.default_dim, True))
        if dimensions is None:
            return native
        if isinstance(dimensions, bool) or not isinstance(dimensions, int):
            msg = f"dimensions must be an integer, got {dimensions!r}"
            raise EmbeddingInputError(msg)
        if not shortenable:
            msg = f"This model does not support specifying dimensions: {model}"
            raise EmbeddingInputError(msg)
        if not 1 <= dimensions <= native:
            msg = f"dimensions must be between 1 and {native} for {model}, got {dimensions}"
            raise EmbeddingInputError(msg)
        return dimensions

    def embed(
        self, model: str, inputs: Sequence[str | Sequence[int]], dimensions: int | None = None
    ) -> Vector:
        """Unit vectors, one row per input, float32, shape ``(len(inputs), dimension)``."""
        return self.embed_with_usage(model, inputs, dimensions)[0]

    def embed_with_usage(
        self, model: str, inputs: Sequence[str | Sequence[int]], dimensions: int | None = None
    ) -> tuple[Vector, int]:
        """Vectors as :meth:`embed` and the input tokens of all inputs together.

        An input is a text (tokens estimated with :func:`~rag_perf_plugins.tokens.estimate_tokens`)
        or a list of token ids (each id one token, one pseudo-word).
        """
        entries = self._entries(model, inputs, dimensions)
        out = np.empty((len(entries), self.dimension_for(model, dimensions)), dtype=np.float32)
        for i, entry in enumerate(entries):
            out[i] = entry.vector
        return out, sum(e.tokens for e in entries)

    def embed_json(
        self,
        model: str,
        inputs: Sequence[str | Sequence[int]],
        dimensions: int | None,
        encoding: str,
    ) -> tuple[list[bytes], int]:
        """Each vector as the JSON value of an ``embedding`` field, and the input tokens.

        ``encoding`` is ``"float"`` (a JSON array) or ``"base64"`` (a JSON string of
        little-endian float32 bytes). Encodings are remembered with the vectors: the float
        form of a 1536-d vector takes about a millisecond to write.
        """
        entries = self._entries(model, inputs, dimensions)
        values = [e.base64_json() if encoding == "base64" else e.float_json() for e in entries]
        return values, sum(e.tokens for e in entries)

    def _entries(
        self, model: str, inputs: Sequence[str | Sequence[int]], dimensions: int | None
    ) -> list[_Entry]:
        dim = self.dimension_for(model, dimensions)
        native = KNOWN_MODELS.get(model, (self.default_dim, True))[0]
        return [self._one(model, native, dim, item) for item in inputs]

    def _one(self, model: str, native: int, dim: int, item: str | Sequence[int]) -> _Entry:
        is_text = isinstance(item, str)
        key = (model, dim, item if isinstance(item, str) else tuple(item))
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        text = item if isinstance(item, str) else token_ids_as_text(item)
        rows, weights = _weighted_words(text)
        gathered = _table(model, native)[rows]
        vector: Vector = np.asarray(weights, dtype=np.float32) @ gathered
        if dim < native:
            vector = vector[:dim].copy()
        norm = math.sqrt(float(vector @ vector))
        if norm == 0.0:  # words that cancel out exactly: fall back to the first row
            vector = gathered[0, :dim].copy()
            norm = math.sqrt(float(vector @ vector))
        vector /= norm
        entry = _Entry(vector, estimate_tokens(text) if is_text else len(item))
        self._cache[key] = entry
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return entry

    def __repr__(self) -> str:
        return (
            f"<Embedder cached={len(self._cache)}/{self._cache_size} "
            f"default_dim={self.default_dim}>"
        )


def token_ids_as_text(tokens: Sequence[int]) -> str:
    """A stand-in text for a pre-tokenised input: one pseudo-word per token id."""
    return " ".join(f"t{t}" for t in tokens)
