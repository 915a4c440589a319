"""What every Redis user of the core shares: clients, URL redaction, the outage breaker.

The Redis backends live beside the interfaces they implement: the cache tier in
:mod:`rag_perf_plugins.cache.redis_tier`, the shared rate budget in
:mod:`rag_perf_plugins.admission.redis_store`. Nothing here is imported by
``import rag_perf_plugins``: redis-py is the optional ``redis`` extra.
"""
