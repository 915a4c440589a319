"""Guards of the semantic cache: content that flips a prompt's meaning must agree.

Example::

    from rag_perf_plugins.cache.guards import disagreement

    disagreement("How do I turn on dark mode?", "How can I enable dark mode?")    # None: agree
    disagreement("How do I turn on dark mode?", "How do I turn off dark mode?")   # "toggle"
    disagreement("Is 7 prime?", "Is 9 prime?")                                     # "numbers"

Embeddings place a question and its negation, or the same question with another number,
at cosine similarity 0.85 to 0.99, so a threshold alone serves wrong answers. A semantic
match is refused unless the query and the stored prompt agree on every rule below (each
compares the *sets* the two texts contain; word forms are reduced by a small stemmer):

``negation``
    The same number of negations (not, no, never, none, nothing, nobody, neither, nor,
    without, cannot and every ``n't`` contraction, also typed without the apostrophe:
    ``dont``, ``isnt``); and no word of one text that is a
    word of the other behind a negating prefix (un-, in-, im-, il-, ir-, dis-, non-:
    ``possible``/``impossible``, ``healthy``/``unhealthy``; checked after ``polarity``).
``numbers``
    The same numbers in the same order, repeats counted: digits (``1,000`` = ``1000``,
    ``3.50`` = ``3.5``), also inside a token (``2024-01-05``, ``5-10``, ``10:30``; a
    version ``1.2.3`` is one number), a leading minus (``-5``), number words up to the
    millions, ordinals (``first`` = 1, ``3rd`` = 3) and ``%``.
``dates``
    The same month, weekday and relative-day words (today, tomorrow, yesterday, tonight,
    weekend) and the same last/next/this.
``units``
    The same units in the same order (km, miles, kg, pounds, °C/°F, GB, dollars, euros,
    hours, ...), each reduced to one name (``kilometres`` = ``km``).
``polarity``
    For each axis (toggle on/off, log/sign/opt in/out, direction increase/decrease,
    up/down, more/less, min/max, add/remove, before/after, buy/sell, import/export,
    upload/download, best/worst, pros/cons, accept/reject, include/exclude, bad,
    earliest/latest, older/newer, cheaper/more expensive, ...) the same poles present.
``entities``
    Every name of one text (a capitalised word that is not a common sentence opener, an
    acronym, a word with letters and digits such as ``gpt-4o``) appears in the other, and
    names appear in the same order.
``content``
    At least one content word (not a stop word) in common.

The rules are conservative: they also refuse some true paraphrases ("switch on" vs "turn
on" agree; "raise" vs "increase" agree; "change" vs "turn on" does not). The evaluation in
``tests/data/semantic_pairs.jsonl`` measures both sides. Not covered: synonyms of entities
written in lower case ("paris" vs "london" is left to the threshold), word order ("dog bites
man"), and meaning carried by context outside the last user message (that goes into the
partition instead).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache
from typing import Final

__all__ = ["RULES", "Signature", "disagreement", "signature"]

RULES: Final = ("negation", "numbers", "dates", "units", "polarity", "entities", "content")

_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9'’._\-]*[A-Za-z0-9%]|[A-Za-z0-9%]")
_SENTENCE_END = re.compile(r"[.!?;:]\s+")

_NEGATIONS: Final = frozenset(
    [
        "not",
        "no",
        "never",
        "none",
        "nothing",
        "nobody",
        "neither",
        "nor",
        "without",
        "cannot",
        "nowhere",
        # n't contractions typed without the apostrophe ("wont" is left out: a noun too)
        "dont",
        "doesnt",
        "didnt",
        "isnt",
        "arent",
        "wasnt",
        "werent",
        "cant",
        "couldnt",
        "shouldnt",
        "wouldnt",
        "hasnt",
        "havent",
        "hadnt",
        "mustnt",
        "neednt",
        "aint",
    ]
)
_NUMBER_WORDS: Final = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
    "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13,
    "fourteen": 14, "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18,
    "nineteen": 19, "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60,
    "seventy": 70, "eighty": 80, "ninety": 90, "hundred": 100, "thousand": 1000,
    "million": 1_000_000, "billion": 1_000_000_000, "dozen": 12, "half": 0.5,
    "first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5, "sixth": 6,
    "seventh": 7, "eighth": 8, "ninth": 9, "tenth": 10, "twice": 2, "double": 2,
    "triple": 3, "once": 1, "single": 1, "pair": 2, "quarter": 0.25,
}  # fmt: skip
_DATE_WORDS: Final = frozenset(
    [
        "january",
        "february",
        "march",
        "april",
        "may",
        "june",
        "july",
        "august",
        "september",
        "october",
        "november",
        "december",
        "jan",
        "feb",
        "mar",
        "apr",
        "jun",
        "jul",
        "aug",
        "sep",
        "sept",
        "oct",
        "nov",
        "dec",
        "monday",
        "tuesday",
        "wednesday",
        "thursday",
        "friday",
        "saturday",
        "sunday",
        "today",
        "tomorrow",
        "yesterday",
        "tonight",
        "weekend",
        "weekday",
        "morning",
        "afternoon",
        "evening",
        "night",
        "spring",
        "summer",
        "autumn",
        "fall",
        "winter",
        "last",
        "next",
        "this",
        "past",
        "previous",
        "upcoming",
    ]
)
_UNITS: Final = {
    "km": "km", "kilometer": "km", "kilometre": "km", "kms": "km",
    "mile": "mile", "mi": "mile", "mph": "mph", "kph": "kph", "kmh": "kph",
    "m": "m", "meter": "m", "metre": "m", "cm": "cm", "centimeter": "cm", "centimetre": "cm",
    "mm": "mm", "millimeter": "mm", "inch": "inch", "in.": "inch", "foot": "ft", "feet": "ft",
    "ft": "ft", "yard": "yard", "kg": "kg", "kilogram": "kg", "kilo": "kg", "g": "g",
    "gram": "g", "mg": "mg", "lb": "lb", "lbs": "lb", "pound": "lb", "ounce": "oz", "oz": "oz",
    "ton": "ton", "tonne": "ton", "celsius": "celsius", "°c": "celsius", "centigrade": "celsius",
    "fahrenheit": "fahrenheit", "°f": "fahrenheit", "kelvin": "kelvin",
    "liter": "l", "litre": "l", "l": "l", "ml": "ml", "milliliter": "ml", "gallon": "gallon",
    "cup": "cup", "tablespoon": "tbsp", "tbsp": "tbsp", "teaspoon": "tsp", "tsp": "tsp",
    "kb": "kb", "mb": "mb", "gb": "gb", "tb": "tb", "kilobyte": "kb", "megabyte": "mb",
    "gigabyte": "gb", "terabyte": "tb", "bit": "bit", "byte": "byte",
    "usd": "usd", "dollar": "usd", "$": "usd", "eur": "eur", "euro": "eur", "€": "eur",
    "gbp": "gbp", "£": "gbp", "sterling": "gbp", "yen": "jpy", "jpy": "jpy",
    "ms": "ms", "millisecond": "ms", "second": "s", "sec": "s", "minute": "min", "min": "min",
    "hour": "h", "hr": "h", "day": "day", "week": "week", "month": "month", "year": "year",
    "percent": "%", "%": "%", "kw": "kw", "kwh": "kwh", "watt": "w", "volt": "v", "hz": "hz",
    "ghz": "ghz", "mhz": "mhz", "calorie": "kcal", "kcal": "kcal",
}  # fmt: skip
# Axes of opposite meaning: word stem -> (axis, pole). Words of one pole are synonyms.
# "bad"/"worse" have no listed opposite on purpose: "good"/"better" are filler in most
# paraphrases ("a good way to"), and "good" vs "bad" still differ (a pole vs none).
_AXES: Final[dict[str, tuple[str, ...]]] = {
    "toggle+": ("enable", "activate", "start", "open", "unlock", "allow", "show",
                "unmute", "connect", "mount", "login", "subscribe", "install", "unblock"),
    "toggle-": ("off", "disable", "deactivate", "stop", "close", "lock", "deny", "hide",
                "mute", "disconnect", "unmount", "logout", "unsubscribe", "uninstall",
                "block", "turn-off", "shut"),
    "amount+": ("increase", "raise", "grow", "boost", "more", "higher", "bigger", "larger",
                "expand", "extend", "maximize", "up", "upgrade", "above", "faster",
                "longer", "heavier", "warmer", "hotter", "gain", "add", "plus"),
    "amount-": ("decrease", "lower", "reduce", "shrink", "cut", "less", "fewer", "smaller",
                "minimize", "down", "downgrade", "below", "slower", "shorter",
                "lighter", "cooler", "colder", "lose", "remove", "delete", "minus", "drop"),
    "extreme+": ("max", "maximum", "most", "highest", "largest", "biggest", "best",
                 "longest", "fastest", "top", "greatest"),
    "extreme-": ("min", "minimum", "least", "lowest", "smallest", "worst", "shortest",
                 "slowest", "bottom", "fewest"),
    "order+": ("before", "prior", "earlier", "begin", "beginning", "earliest"),
    "order-": ("after", "later", "last", "end", "ending", "finish", "latest"),
    "age+": ("older", "oldest", "elder", "eldest"),
    "age-": ("newer", "newest", "younger", "youngest"),
    "price+": ("expensive", "pricier", "priciest", "costlier", "costly"),
    "price-": ("cheap", "cheaper", "cheapest", "inexpensive", "affordable"),
    "trade+": ("buy", "purchase", "import", "download", "receive", "deposit", "borrow",
               "pull", "inbound", "incoming"),
    "trade-": ("sell", "export", "upload", "send", "withdraw", "lend", "push", "outbound",
               "outgoing"),
    "judge+": ("pro", "advantage", "benefit", "true", "yes", "safe", "legal", "allowed",
               "positive", "success", "win", "pass", "valid", "accept"),
    "judge-": ("con", "disadvantage", "drawback", "risk", "false", "unsafe", "illegal",
               "forbidden", "negative", "failure", "fail", "lose", "invalid", "bad",
               "worse", "reject"),
    "side+": ("left", "north", "east", "inside", "internal", "front", "input", "encrypt",
              "compress", "serialize", "encode", "include"),
    "side-": ("right", "south", "west", "outside", "external", "back", "output", "decrypt",
              "decompress", "deserialize", "decode", "exclude"),
}  # fmt: skip
_STOP: Final = frozenset(
    [
        "a",
        "an",
        "the",
        "and",
        "or",
        "but",
        "if",
        "of",
        "to",
        "in",
        "on",
        "at",
        "by",
        "for",
        "with",
        "from",
        "into",
        "onto",
        "about",
        "as",
        "is",
        "are",
        "was",
        "were",
        "be",
        "been",
        "being",
        "am",
        "do",
        "does",
        "did",
        "doing",
        "done",
        "have",
        "has",
        "had",
        "having",
        "i",
        "me",
        "my",
        "mine",
        "you",
        "your",
        "yours",
        "we",
        "our",
        "us",
        "he",
        "him",
        "his",
        "she",
        "her",
        "it",
        "its",
        "they",
        "them",
        "their",
        "this",
        "that",
        "these",
        "those",
        "what",
        "which",
        "who",
        "whom",
        "whose",
        "when",
        "where",
        "why",
        "how",
        "can",
        "could",
        "should",
        "would",
        "will",
        "shall",
        "may",
        "might",
        "must",
        "please",
        "tell",
        "explain",
        "show",
        "give",
        "list",
        "describe",
        "get",
        "way",
        "ways",
        "there",
        "here",
        "some",
        "any",
        "all",
        "each",
        "every",
        "just",
        "also",
        "very",
        "really",
        "so",
        "than",
        "then",
        "too",
        "quite",
        "much",
        "many",
        "it's",
        "i'm",
        "what's",
        "how's",
        "there's",
        "let",
        "me",
        "know",
        "need",
        "want",
        "like",
        "make",
        "best",
        "good",
        "use",
        "using",
        "used",
        "thing",
        "things",
        "something",
        "anything",
        "kind",
        "sort",
        "help",
        "hi",
        "hello",
        "thanks",
        "thank",
    ]
)
_OPENERS: Final = _STOP | frozenset(
    [
        "is",
        "are",
        "can",
        "could",
        "should",
        "would",
        "will",
        "do",
        "does",
        "did",
        "how",
        "what",
        "why",
        "where",
        "when",
        "which",
        "who",
        "please",
        "tell",
        "explain",
        "give",
        "list",
        "describe",
        "show",
        "write",
        "summarize",
        "summarise",
        "compare",
        "define",
        "translate",
        "find",
        "name",
        "suggest",
        "recommend",
        "calculate",
        "convert",
    ]
)


def _stem(word: str) -> str:
    """A tiny suffix stripper: ``increases``/``increased``/``increasing`` -> ``increase``."""
    w = word.lower().replace("’", "'")
    for suffix, keep in (("ies", "y"), ("sses", "ss"), ("ing", ""), ("ed", ""), ("es", "e")):
        if w.endswith(suffix) and len(w) - len(suffix) >= 3:
            base = w[: -len(suffix)] + keep
            if suffix in ("ing", "ed"):
                # increas(ing) -> increase, stopp(ed) -> stop
                if base + "e" in _LEXICON:
                    return base + "e"
                if len(base) > 3 and base[-1] == base[-2]:
                    return base[:-1]
            if suffix == "es" and base not in _LEXICON and base[:-1] in _LEXICON:
                return base[:-1]
            return base
    if w.endswith("s") and not w.endswith("ss") and len(w) > 3:
        return w[:-1]
    return w


_POLE: Final[dict[str, str]] = {w: axis for axis, words in _AXES.items() for w in words}
_LEXICON: Final = frozenset(_POLE) | frozenset(_UNITS) | frozenset(_NUMBER_WORDS)


class Signature:
    """What the guards compare of one text: ``signature("Turn on 2 lights").numbers``."""

    __slots__ = (
        "content",
        "dates",
        "entities",
        "negations",
        "numbers",
        "order",
        "poles",
        "tokens",
        "units",
        "words",
    )

    def __init__(self, text: str) -> None:
        raw = [m.group(0).rstrip(".") for m in _WORD.finditer(text.replace("’", "'"))]
        raw = [t for t in raw if t]
        lower = [t.lower() for t in raw]
        self.words = frozenset(t.strip("'") for t in lower)
        self.tokens = frozenset(lower) | frozenset(_stem(t) for t in lower)
        self.negations = sum(1 for t in lower if t in _NEGATIONS or t.endswith("n't"))
        # In order and with repeats: "5 to 3" != "3 to 5", "2 times 2 times 3" != "2 times 3".
        self.numbers = tuple(_numbers(text.replace("’", "'")))
        self.dates = frozenset(t for t in lower if t in _DATE_WORDS)
        units: dict[str, None] = {}
        for t in lower:
            unit = _UNITS.get(t) or _UNITS.get(_stem(t))
            if unit is None and re.fullmatch(r"\d+(?:[.,]\d+)?[a-z%°$€£]+", t):
                suffix = re.sub(r"^\d+(?:[.,]\d+)?", "", t)
                unit = _UNITS.get(suffix) or _UNITS.get(_stem(suffix))
            if unit is not None:
                units[unit] = None
        for symbol in ("$", "€", "£", "%", "°c", "°f"):
            if symbol in text.lower():
                units.setdefault(_UNITS[symbol])
        self.units = tuple(units)  # in order: "km to miles" != "miles to km"
        self.poles = frozenset(_poles(lower))
        self.entities = frozenset(_entities(text, raw))
        self.order = lower
        self.content = frozenset(
            _stem(t)
            for t in lower
            if t not in _STOP and t not in _NEGATIONS and not t.isdigit() and len(t) > 1
        )

    def __repr__(self) -> str:
        return (
            f"<Signature negations={self.negations} numbers={sorted(self.numbers)} "
            f"dates={sorted(self.dates)} units={sorted(self.units)} poles={sorted(self.poles)} "
            f"entities={sorted(self.entities)}>"
        )


_SWITCH_VERBS: Final = frozenset(
    [
        "turn",
        "turned",
        "turning",
        "turns",
        "switch",
        "switched",
        "switching",
        "toggle",
        "set",
        "keep",
        "leave",
        "put",
        "stay",
        "stays",
        "is",
        "was",
        "be",
        "it",
        "them",
    ]
)


_IN_OUT_VERBS: Final = frozenset(
    [
        "log",
        "logged",
        "logging",
        "logs",
        "sign",
        "signed",
        "signing",
        "signs",
        "check",
        "checked",
        "checking",
        "checks",
        "opt",
        "opted",
        "opting",
        "opts",
        "clock",
        "clocked",
        "clocking",
        "plug",
        "plugged",
        "plugging",
        "zoom",
        "zooming",
    ]
)


def _poles(lower: list[str]) -> Iterable[str]:
    for i, t in enumerate(lower):
        if t in ("in", "out") and i > 0 and lower[i - 1] in _IN_OUT_VERBS:
            yield "toggle+" if t == "in" else "toggle-"  # log in / log out, opt in / out
            continue
        if t == "on":
            # "turn on", "is it on": the toggle; "a book on Rome": a preposition.
            if (i > 0 and lower[i - 1] in _SWITCH_VERBS) or i == len(lower) - 1:
                yield "toggle+"
            continue
        pole = _POLE.get(t) or _POLE.get(_stem(t))
        if pole is not None:
            yield pole


# A number (thousands groups, a decimal, or a dotted version) or a word, anywhere in the text.
_NUMBER_OR_WORD = re.compile(r"(\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)*)|([A-Za-z]+)")
_MINUS: Final = frozenset("-\u2212")


def _numbers(text: str) -> Iterable[float | str]:
    """Every number of ``text`` in order: digits anywhere (``2024-01-05``: 2024, 1, 5), words."""
    for m in _NUMBER_OR_WORD.finditer(text):
        digits, word = m.group(1), m.group(2)
        if digits is None:
            if word.lower() in _NUMBER_WORDS:
                yield float(_NUMBER_WORDS[word.lower()])
            continue
        start = m.start()
        # A minus right before the digits and not between two terms ("5-10" is a range).
        negative = (
            start > 0
            and text[start - 1] in _MINUS
            and (start == 1 or not (text[start - 2].isalnum() or text[start - 2] in ")]}"))
        )
        digits = digits.replace(",", "")
        if digits.count(".") > 1:  # a version or an address: 1.2.3 is one value
            yield ("-" if negative else "") + ".".join(str(int(p)) for p in digits.split("."))
        else:
            yield -float(digits) if negative else float(digits)


_NEGATING_PREFIXES: Final = ("non", "dis", "un", "in", "im", "il", "ir")


def _affixal_negation(a: frozenset[str], b: frozenset[str]) -> bool:
    """A word of one text is a word of the other behind a negating prefix (``unhealthy``)."""
    only_a, only_b = a - b, b - a
    for words, others in ((only_a, only_b), (only_b, only_a)):
        for word in words:
            for prefix in _NEGATING_PREFIXES:
                base = word[len(prefix) :].lstrip("-")
                if word.startswith(prefix) and len(base) >= 4 and base in others:
                    return True
    return False


def _entities(text: str, raw: list[str]) -> Iterable[str]:
    starts = {0}
    for m in _SENTENCE_END.finditer(text):
        starts.add(m.end())
    positions = [m.start() for m in _WORD.finditer(text.replace("’", "'"))]
    for pos, token in zip(positions, raw, strict=False):
        bare = token.strip("'")
        if not bare:
            continue
        has_digit = any(c.isdigit() for c in bare)
        has_alpha = any(c.isalpha() for c in bare)
        if has_digit and has_alpha and not re.fullmatch(r"\d+(?:st|nd|rd|th|s)", bare.lower()):
            yield bare.lower()  # gpt-4o, s3, python3, v2
            continue
        if not bare[0].isupper() or bare == "I" or bare.lower() in _UNITS:
            continue
        if pos in starts and (bare.lower() in _OPENERS or bare.lower() in _NEGATIONS):
            continue  # "What", "How", "Please" opening a sentence
        yield bare.lower()


def _sequence(tokens: list[str], names: frozenset[str]) -> list[str]:
    return list(dict.fromkeys(t for t in tokens if t in names))


@lru_cache(maxsize=4096)
def signature(text: str) -> Signature:
    """The guards' view of ``text`` (cached per text: the same prompt is checked often)."""
    return Signature(text)


def disagreement(query: str, candidate: str) -> str | None:
    """The first rule on which ``query`` and ``candidate`` disagree, or ``None`` when all agree.

    Example: ``disagreement("Why is my VPN not connecting?", "Why is my VPN connecting?")``
    is ``"negation"``. The rules and their order are :data:`RULES`.
    """
    a, b = signature(query), signature(candidate)
    if a.negations != b.negations:
        return "negation"
    if a.numbers != b.numbers:
        return "numbers"
    if a.dates != b.dates:
        return "dates"
    if a.units != b.units:
        return "units"
    if a.poles != b.poles:
        return "polarity"
    if _affixal_negation(a.words, b.words):
        return "negation"  # possible / impossible, healthy / unhealthy, profit / non-profit
    if not a.entities <= b.tokens or not b.entities <= a.tokens:
        return "entities"
    shared = a.entities | b.entities
    if len(shared) > 1 and _sequence(a.order, shared) != _sequence(b.order, shared):
        return "entities"  # "from Paris to London" vs "from London to Paris"
    if a.content and b.content and not a.content & b.content:
        return "content"
    return None
