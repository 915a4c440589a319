from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from rag_perf_plugins.tokens import (
    _ASCII_PIECES,
    _PIECES,
    estimate_messages_tokens,
    estimate_tokens,
    estimate_tokens_many,
)


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


# --- the ASCII pattern splits exactly as the Unicode one ------------------------------
# estimate_tokens uses _ASCII_PIECES for ASCII text (faster); any difference in the pieces
# would change estimates, so the two are compared piece for piece.
_ASCII = "".join(chr(c) for c in range(128))


def test_ascii_pattern_matches_unicode_pattern_on_every_pair_of_ascii_characters() -> None:
    for a in _ASCII:
        texts = [a + b for b in _ASCII] + [a + b + a for b in _ASCII]
        for text in texts:
            assert _ASCII_PIECES.findall(text) == _PIECES.findall(text), repr(text)


@settings(max_examples=3000, deadline=None)
@given(st.text(alphabet=st.sampled_from(_ASCII + "'sdmtlvre"), max_size=40))
def test_ascii_pattern_matches_unicode_pattern_on_ascii_text(text: str) -> None:
    assert _ASCII_PIECES.findall(text) == _PIECES.findall(text)


def test_estimate_of_ascii_text_is_the_unicode_patterns_estimate() -> None:
    texts = [
        "What is retrieval augmented generation? It combines search with LLMs.",
        "def f(x):\r\n    return x**2  # square\n\n\x1c\x1dtab\there",
        "I'll say it's 12345 o'clock... (really!!!) won't we've",
        "__init__ self._lock = threading.Lock()\n",
        "naïve café: ２３ tokens½ — über",  # not ASCII: the Unicode pattern, as before
    ]
    for text in texts:
        expected = 0
        for piece in _PIECES.findall(text):
            core = piece.strip()
            if not core:
                expected += 1
            elif core[-1].isalpha():
                expected += -(-len(core) // 7)
            elif core.isdigit():
                expected += 1
            else:
                expected += -(-len(core) // 2)
        assert estimate_tokens(text) == expected
