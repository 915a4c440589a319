"""Install our wrappers into LlamaIndex's global ``Settings``, and take them out again.

Call :func:`configure_settings` **before building indexes, query engines or ingestion
pipelines**: LlamaIndex components copy ``Settings.embed_model`` when they are built, so an
index built earlier keeps the unwrapped model::

    from llama_index.core import Settings, VectorStoreIndex
    from rag_perf_plugins.llama_index import configure_settings, restore_settings

    Settings.embed_model = pooled_openai_embedding(api_base="http://127.0.0.1:8600/v1")
    configure_settings()                       # Settings.embed_model is now a PerfEmbedding
    index = VectorStoreIndex.from_documents(documents)
    ...
    restore_settings()                         # the original model is back

Code that passes models explicitly (``VectorStoreIndex(..., embed_model=...)``) does not
read ``Settings``; wrap those objects yourself with :class:`PerfEmbedding`.

What this does not do (yet): wrap ``Settings.llm``. The LLM wrapper comes with the second
LlamaIndex part; until then only the embedding model is wrapped and the LLM is left alone.
It never resolves LlamaIndex's defaults: when no embedding model was set, nothing is
wrapped (reading the public ``Settings.embed_model`` would build an ``OpenAIEmbedding`` and
raise without ``OPENAI_API_KEY``), and a warning says so.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.settings import Settings
from rag_perf_plugins.config import PerformanceConfig

from .embeddings import PerfEmbedding

__all__ = ["SettingsState", "configure_settings", "restore_settings"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SettingsState:
    """What :func:`configure_settings` did: the wrapper it installed and what it replaced.

    Attributes:
        embed_model: The :class:`PerfEmbedding` now in ``Settings``, or ``None`` when no
            embedding model was set and nothing was wrapped.
        original_embed_model: The object ``restore_settings()`` puts back.
        llm_wrapped: Always ``False`` until the LLM wrapper lands.
    """

    embed_model: PerfEmbedding | None
    original_embed_model: BaseEmbedding | None
    llm_wrapped: bool = False


_lock = threading.Lock()
# The wrapper we installed and the object it replaced; None when we installed nothing.
_installed: PerfEmbedding | None = None
_original: BaseEmbedding | None = None


def configure_settings(config: PerformanceConfig | None = None) -> SettingsState:
    """Wrap ``Settings.embed_model`` in a :class:`PerfEmbedding`, in place.

    Example::

        Settings.embed_model = OpenAIEmbedding(api_base=..., max_retries=0)
        state = configure_settings(PerformanceConfig(batch_size=64))
        state.embed_model.inner is state.original_embed_model     # True

    Idempotent: calling it again with the same config changes nothing; with another
    config it re-wraps the original model (never a wrapper in a wrapper). If the user set a
    new embedding model since, that new model is wrapped and becomes the one restored.

    Reads the private ``Settings._embed_model`` so LlamaIndex's OpenAI default is never
    resolved; a model that is already a :class:`PerfEmbedding` the caller built is kept.

    Args:
        config: Settings of the wrapper; ``None`` means ``PerformanceConfig.load()``
            (environment and defaults).

    Returns:
        What is installed now.
    """
    global _installed, _original
    with _lock:
        current = Settings._embed_model
        if current is None:
            logger.warning(
                "configure_settings(): Settings.embed_model is not set, so it was not "
                "wrapped; set it first (reading it now would build LlamaIndex's OpenAI default)"
            )
            return SettingsState(embed_model=None, original_embed_model=None)
        if current is _installed and _installed is not None:
            if config is None or _installed.config == config:
                return SettingsState(embed_model=_installed, original_embed_model=_original)
            inner = _original
        elif isinstance(current, PerfEmbedding):
            # The caller wrapped it already: keep theirs, and restore nothing.
            _installed, _original = None, None
            return SettingsState(embed_model=current, original_embed_model=current)
        else:
            inner = current
        assert inner is not None  # _original is set whenever _installed is
        wrapper = PerfEmbedding(inner, config=config)
        # Assigning the private field skips resolve_embed_model(), which only re-checks the
        # type; the wrapper is a BaseEmbedding, so every reader of Settings accepts it.
        Settings._embed_model = wrapper
        _installed, _original = wrapper, inner
        return SettingsState(embed_model=wrapper, original_embed_model=inner)


def restore_settings() -> bool:
    """Put back the embedding model that :func:`configure_settings` wrapped.

    Example::

        configure_settings()
        restore_settings()          # True: Settings.embed_model is the original again
        restore_settings()          # False: nothing left to restore

    A model the user set after ``configure_settings()`` is left in place (it is theirs).
    Indexes and engines built while the wrapper was installed keep using it.

    Returns:
        ``True`` when an original model was put back.
    """
    global _installed, _original
    with _lock:
        installed, original = _installed, _original
        _installed, _original = None, None
        if installed is None or Settings._embed_model is not installed:
            return False
        Settings._embed_model = original
        return True
