"""``python -m rag_perf_plugins.bench [options]``: the same as ``rag-perf bench``."""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
