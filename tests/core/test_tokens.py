from __future__ import annotations

from rag_perf_plugins.tokens import estimate_messages_tokens, estimate_tokens, estimate_tokens_many


def test_small_cases() -> None:
    assert estimate_tokens("") == 0
    assert estimate_tokens("hello world") == 2
    assert estimate_tokens_many(["a b c", "hello world"]) == [3, 2]
    assert estimate_tokens("1234567") == 3  # digit runs of up to three


def test_grows_with_text_and_is_stable() -> None:
    short = estimate_tokens("retrieval augmented generation")
    assert estimate_tokens("retrieval augmented generation " * 10) >= 10 * short - 10
    assert estimate_tokens("same text") == estimate_tokens("same text")


def test_messages_add_framing() -> None:
    assert estimate_messages_tokens([("user", "hello world")]) == 3 + 3 + 1 + 2
