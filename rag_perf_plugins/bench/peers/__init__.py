"""Peer comparisons (LangChain / LlamaIndex built-ins); frameworks are imported lazily."""
