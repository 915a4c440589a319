"""Every public method of the frameworks' vector-store base classes is accounted for.

Each is overridden by the wrapper (cached, or a write that bumps the version, or passed
through to the inner store) or inherited on purpose because the base implementation only
routes to methods the wrapper overrides. A framework release that adds a public method
fails here until the wrapper handles it or the lists below say why not.
"""

from __future__ import annotations

import inspect

import pydantic
from langchain_core.vectorstores import VectorStore
from llama_index.core.vector_stores.types import BasePydanticVectorStore
from rag_perf_plugins.langchain import PerfVectorStore
from rag_perf_plugins.llama_index import PerfVectorStore as LlamaPerfVectorStore

# Base implementations that only call methods the wrapper overrides.
LC_INHERITED = {
    "search": "dispatches to the cached similarity_search / MMR / relevance methods",
    "asearch": "dispatches to their async twins",
    "from_documents": "calls from_texts, overridden to build and wrap the inner store",
    "afrom_documents": "calls afrom_texts",
    "afrom_texts": "runs from_texts in an executor",
}
LI_INHERITED = {
    "to_dict": "serializes the wrapper (LlamaIndex's BaseComponent)",
    "to_json": "serializes the wrapper",
    "custom_model_dump": "serializes the wrapper",
    "from_dict": "unsupported for a wrapper: it cannot rebuild the inner store's clients",
    "from_json": "unsupported for a wrapper, as from_dict",
}


def _public(cls: type, skip: set[str]) -> set[str]:
    return {
        name for name, _ in inspect.getmembers(cls) if not name.startswith("_") and name not in skip
    }


def test_langchain_every_public_method_is_overridden_or_routes_to_overrides() -> None:
    own = set(PerfVectorStore.__dict__)
    missing = _public(VectorStore, set()) - own - set(LC_INHERITED)
    assert not missing, f"PerfVectorStore does not handle {sorted(missing)}"
    assert not set(LC_INHERITED) & own


def test_llama_index_every_public_method_is_overridden_or_routes_to_overrides() -> None:
    own = set(LlamaPerfVectorStore.__dict__)
    base = set(dir(pydantic.BaseModel))
    public = {
        name
        for name in _public(BasePydanticVectorStore, base)
        if callable(getattr(BasePydanticVectorStore, name, None))
    }
    missing = public - own - set(LI_INHERITED)
    assert not missing, f"PerfVectorStore does not handle {sorted(missing)}"
