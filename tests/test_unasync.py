"""The generated blocking twins match their async sources (tests/unasync.py)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests import unasync


def test_every_generated_twin_matches_its_async_source() -> None:
    assert unasync.check(write=False) == []


def test_a_drifted_twin_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "twins.py"
    source.write_text(
        "class C:\n"
        "    async def aget(self, key: str) -> int:\n"
        '        """Async get."""\n'
        "        return await self._alookup(key)\n"
        "\n"
        "    # unasync: generated from aget\n"
        "    def get(self, key: str) -> int:\n"
        '        """Get."""\n'
        "        return self._lookup(key) + 1  # drifted\n"
    )
    twins = unasync.Twins(
        "twins.py",
        (("C.aget", "C.get"),),
        {"async def aget": "def get", "self._alookup(": "self._lookup("},
    )
    monkeypatch.setattr(unasync, "ROOT", tmp_path)
    monkeypatch.setattr(unasync, "TWINS", (twins,))
    (problem,) = unasync.check(write=False)
    assert "-        return self._lookup(key) + 1  # drifted" in problem
    assert "+        return self._lookup(key)" in problem
    unasync.check(write=True)
    fixed = source.read_text()
    assert "return self._lookup(key)\n" in fixed and '"""Get."""' in fixed
    assert unasync.check(write=False) == []
    ast.parse(fixed)
