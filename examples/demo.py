"""The end-to-end demo behind `make demo`.

It grows with the project: each stage runs what exists end to end and says what it showed.
Run it with ``python examples/demo.py``.
"""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from rag_perf_plugins import ConfigError, PerformanceConfig, __version__


def main() -> None:
    console = Console()
    console.rule(f"rag-perf-plugins {__version__}: demo")
    table = Table(title="The seed's presets, as PerformanceConfig builds them")
    keys = [
        "connection_pool_size",
        "cache_size",
        "cache_ttl",
        "max_concurrent_requests",
        "batch_size",
        "async_enabled",
    ]
    table.add_column("preset")
    for key in keys:
        table.add_column(key)
    for name in ("high-throughput", "low-latency", "memory-constrained"):
        config = PerformanceConfig.from_preset(name)
        table.add_row(name, *(str(getattr(config, key)) for key in keys))
    console.print(table)
    try:
        PerformanceConfig.from_dict({"cache_szie": 5})
    except ConfigError as exc:
        console.print(f"A mistyped key is caught: [bold]{exc}[/bold]")
    console.print(
        "Shown: configuration and presets. Later stages add the provider simulator, "
        "cache, pools, admission gate and the LangChain / LlamaIndex pipelines."
    )


if __name__ == "__main__":
    main()
