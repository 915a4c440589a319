"""Per-call cache control read from LangChain config metadata."""

from __future__ import annotations

import pytest
from rag_perf_plugins.langchain.control import applied, control_from_config

from rag_perf_plugins.cache import current_control


def test_metadata_maps_onto_the_core_control() -> None:
    control = control_from_config({"metadata": {"rag_perf": {"cache": "refresh", "ttl": 60}}})
    assert control is not None and (control.mode, control.ttl) == ("refresh", 60.0)
    assert control_from_config({"metadata": {"other": 1}}) is None
    assert control_from_config(None) is None
    with applied(control):
        assert current_control().mode == "refresh"
    assert current_control().mode == "default"


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ({"rag_perf": {"cache": "sometimes"}}, "mode must be one of"),
        ({"rag_perf": {"cache": "bypass", "ttl": -1}}, "ttl must be > 0"),
        ({"rag_perf": {"mode": "bypass"}}, "unknown option"),
        ({"rag_perf": 3}, "must be a mapping"),
    ],
)
def test_bad_metadata_is_named(metadata: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        control_from_config({"metadata": metadata})
