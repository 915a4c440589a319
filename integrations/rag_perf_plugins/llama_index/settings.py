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

It wraps ``Settings.embed_model`` in a :class:`PerfEmbedding`, ``Settings.llm`` with
:func:`wrap_llm` (a :class:`PerfFunctionCallingLLM` when the LLM does function calling),
and, when ``enable_metrics`` is on, installs the instrumentation handlers
(:func:`install_instrumentation`) that record every stage into the tracker.

Code that passes models explicitly (``VectorStoreIndex(..., embed_model=...)``,
``as_query_engine(llm=...)``) does not read ``Settings``; wrap those objects yourself with
:class:`PerfEmbedding` and :func:`wrap_llm`.

It never resolves LlamaIndex's defaults: it reads the private ``Settings._embed_model`` and
``Settings._llm``, and when one was not set it is not wrapped (reading the public property
would build LlamaIndex's OpenAI default and raise without ``OPENAI_API_KEY``), and a
warning says so.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.llms.llm import LLM
from llama_index.core.settings import Settings
from rag_perf_plugins.config import PerformanceConfig, resolve_config

from .embeddings import PerfEmbedding
from .instrumentation import Instrumentation, install_instrumentation
from .llms import PerfLLM, wrap_llm

__all__ = ["SettingsState", "configure_settings", "restore_settings"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SettingsState:
    """What :func:`configure_settings` did: the wrappers it installed and what they replaced.

    Attributes:
        embed_model: The :class:`PerfEmbedding` now in ``Settings``, or ``None`` when no
            embedding model was set and nothing was wrapped.
        original_embed_model: The object ``restore_settings()`` puts back.
        llm: The :class:`PerfLLM` now in ``Settings``, or ``None`` when no LLM was set.
        original_llm: The LLM ``restore_settings()`` puts back.
        instrumentation: The handlers installed on LlamaIndex's root dispatcher, or
            ``None`` when metrics are off.
    """

    embed_model: PerfEmbedding | None
    original_embed_model: BaseEmbedding | None
    llm: PerfLLM | None = None
    original_llm: LLM | None = None
    instrumentation: Instrumentation | None = None

    @property
    def llm_wrapped(self) -> bool:
        """Whether ``Settings.llm`` is a :class:`PerfLLM` because of this call."""
        return self.llm is not None


class _Slot:
    """One ``Settings`` field we wrap: the wrapper we installed and what it replaced."""

    def __init__(self, attr: str, label: str, wrapper_cls: type, wrap: Any) -> None:
        self.attr = attr
        self.label = label
        self.wrapper_cls = wrapper_cls
        self.wrap = wrap
        self.installed: Any = None
        self.original: Any = None

    def configure(self, config: PerformanceConfig | None) -> tuple[Any, Any]:
        current = getattr(Settings, self.attr)
        if current is None:
            logger.warning(
                "configure_settings(): Settings.%s is not set, so it was not wrapped; set it "
                "first (reading it now would build LlamaIndex's OpenAI default)",
                self.label,
            )
            return None, None
        if current is self.installed and self.installed is not None:
            if config is None or self.installed.config == config:
                return self.installed, self.original
            inner = self.original
        elif isinstance(current, self.wrapper_cls):
            # The caller wrapped it already: keep theirs, and restore nothing.
            self.installed, self.original = None, None
            return current, current
        else:
            inner = current
        wrapper = self.wrap(inner, config)
        # Assigning the private field skips the public setter's resolve_*() step, which only
        # re-checks the type; the wrapper is a BaseEmbedding / LLM, so every reader accepts it.
        setattr(Settings, self.attr, wrapper)
        self.installed, self.original = wrapper, inner
        return wrapper, inner

    def restore(self) -> bool:
        installed, original = self.installed, self.original
        self.installed, self.original = None, None
        if installed is None or getattr(Settings, self.attr) is not installed:
            return False
        setattr(Settings, self.attr, original)
        return True


_lock = threading.Lock()
_embed = _Slot("_embed_model", "embed_model", PerfEmbedding, PerfEmbedding)
_llm = _Slot("_llm", "llm", PerfLLM, wrap_llm)
_instrumentation: Instrumentation | None = None


def configure_settings(
    config: PerformanceConfig | None = None, *, instrument: bool = True
) -> SettingsState:
    """Wrap ``Settings.embed_model`` and ``Settings.llm`` in place; install the handlers.

    Example::

        Settings.embed_model = pooled_openai_embedding(api_base=...)
        Settings.llm = pooled_openai_llm(api_base=...)
        state = configure_settings(PerformanceConfig(batch_size=64))
        state.embed_model.inner is state.original_embed_model     # True
        state.llm.inner is state.original_llm                     # True

    Idempotent: calling it again with the same config changes nothing; with another
    config it re-wraps the original models (never a wrapper in a wrapper). If the user set
    a new model since, that new model is wrapped and becomes the one restored. A model the
    caller already wrapped (a :class:`PerfEmbedding` / :class:`PerfLLM`) is kept.

    Args:
        config: Settings of the wrappers; ``None`` means ``PerformanceConfig.load()``
            (environment and defaults).
        instrument: Also install the instrumentation handlers on LlamaIndex's root
            dispatcher (only when ``enable_metrics`` is on), feeding the process tracker.

    Returns:
        What is installed now.
    """
    global _instrumentation
    with _lock:
        embed, original_embed = _embed.configure(config)
        llm, original_llm = _llm.configure(config)
        effective = resolve_config(config)
        if instrument and effective.enable_metrics:
            _instrumentation = install_instrumentation()
        return SettingsState(
            embed_model=embed,
            original_embed_model=original_embed,
            llm=llm,
            original_llm=original_llm,
            instrumentation=_instrumentation,
        )


def restore_settings() -> bool:
    """Put back the models that :func:`configure_settings` wrapped; remove its handlers.

    Example::

        configure_settings()
        restore_settings()          # True: Settings.embed_model / llm are the originals again
        restore_settings()          # False: nothing left to restore

    A model the user set after ``configure_settings()`` is left in place (it is theirs).
    Indexes and engines built while the wrappers were installed keep using them.

    Returns:
        ``True`` when an original model was put back (the handlers are removed either way).
    """
    global _instrumentation
    with _lock:
        restored = _embed.restore()
        restored = _llm.restore() or restored
        handle, _instrumentation = _instrumentation, None
        if handle is not None:
            handle.uninstall()
        return restored
