"""The benchmark suite behind ``rag-perf bench`` (see :mod:`rag_perf_plugins.bench.registry`)."""
