"""Simulated chat completions: a deterministic answer grounded in the prompt; pure, no I/O.

Example::

    context = "Paris is the capital of France." + 2 * NL + "Berlin is the capital of Germany."
    request = ChatRequest.parse({
        "model": "gpt-4o-mini", "temperature": 0,
        "messages": [
            {"role": "system", "content": "Use this context." + 2 * NL + context},
            {"role": "user", "content": "What is the capital of France?"},
        ],
    })
    plan = plan_chat(request, sample=0)
    plan.choices[0].content     # 'Based on the context: "Paris is the capital of France."'
    completion_body(plan, "chatcmpl-1", created=0)   # the JSON object OpenAI would send
    stream_events(plan, "chatcmpl-1", created=0)     # the SSE payloads of a stream

(``NL`` stands for a newline character.)

How an answer is made:

- The question is the text after a ``Question:`` / ``Query:`` label in the last user
  message, else that whole message. Passages are the blocks of the system and user messages
  separated by blank lines or ``-----`` rules (labels and the question removed). The answer
  quotes the passage sharing the most content words with the question (its best-matching
  sentences when it is long); with no passage at all it says what it was asked.
- ``temperature`` 0 gives one fixed wording. Above 0 (OpenAI's default is 1) the opening
  words vary: per ``seed`` when one is given (same seed, same answer), else per request.
- ``stop`` cuts the answer before the first stop string (finish_reason ``stop``);
  ``max_tokens`` / ``max_completion_tokens`` cut it after that many estimated tokens
  (finish_reason ``length``).
- With ``tools`` (and ``tool_choice`` not ``"none"``), the answer is one call to the tool
  named by ``tool_choice``, else the first tool, with arguments made from its JSON schema
  (finish_reason ``tool_calls``). When the last message is a tool result, the answer is
  text quoting that result.
- ``response_format`` ``json_object`` gives ``{"answer": ...}``; ``json_schema`` gives a
  value fitting the schema with strings taken from the answer.

Token counts are :mod:`rag_perf_plugins.tokens` estimates. Usage carries OpenAI's details:
``prompt_tokens_details.cached_tokens`` from a :class:`PromptCache` (a prompt whose leading
messages were sent before, 1,024 tokens or more, is cached in 128-token steps, as OpenAI's
automatic prompt caching does) and ``completion_tokens_details.reasoning_tokens`` (models
named like ``o1``, ``o3-mini``, ``o4-mini`` think twice the answer's tokens first; the
reasoning is counted in ``completion_tokens``, as OpenAI does). Not done: images and audio
(non-text content parts are ignored), ``logprobs``, legacy ``functions``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..tokens import estimate_tokens
from .embeddings import content_words
from .schema import example_for_schema

__all__ = [
    "ChatInputError",
    "ChatPlan",
    "ChatRequest",
    "Choice",
    "PromptCache",
    "completion_body",
    "plan_chat",
    "stream_events",
    "text_pieces",
]

_OPENINGS = (
    "Based on the context",
    "According to the context",
    "The context says",
    "From the provided context",
    "Going by the context",
)
_QUESTION = re.compile(r"^\s*(?:question|query)\s*:\s*(.*)$", re.IGNORECASE | re.MULTILINE)
_LABEL = re.compile(r"^\s*(?:question|query|answer|context)\s*:\s*", re.IGNORECASE)
_RULE = re.compile(r"^\s*[-=*#_~]{3,}\s*$", re.MULTILINE)
_BLANK = re.compile(r"\n\s*\n")
_SENTENCE = re.compile(r"(?<=[.!?])\s+")
_PIECE = re.compile(r"\s*\S+(?:\s+$)?")  # trailing whitespace joins the last piece
_MAX_QUOTE_WORDS = 80
# Message framing of the chat format, as rag_perf_plugins.tokens.estimate_messages_tokens.
_TOKENS_PER_MESSAGE = 3
_TOKENS_PER_REPLY = 3

# OpenAI's automatic prompt caching: prompts from this many tokens, cached in these steps.
PROMPT_CACHE_MIN_TOKENS = 1024
PROMPT_CACHE_STEP = 128
_REASONING_MODEL = re.compile(r"^(?:.*/)?o\d")
_REASONING_FACTOR = 2

# Words, roles and system prompts repeat from request to request: estimate each once.
_tokens = functools.lru_cache(maxsize=65_536)(estimate_tokens)


class ChatInputError(ValueError):
    """The request body is not a valid chat completion request (the server answers 400)."""


def _text_of(content: object) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict) and part.get("type") == "text":
                parts.append(str(part.get("text", "")))
            elif isinstance(part, str):
                parts.append(part)
        return "\n".join(parts)
    msg = f"message content must be a string or a list of parts, got {type(content).__name__}"
    raise ChatInputError(msg)


@dataclass(frozen=True, slots=True)
class Message:
    """One chat message reduced to what the simulator reads: role and text."""

    role: str
    text: str


@dataclass(frozen=True)
class ChatRequest:
    """The fields of a chat completion request that change the answer, checked.

    Build it with :meth:`parse` from the decoded JSON body.
    """

    model: str
    messages: tuple[Message, ...]
    stream: bool = False
    include_usage: bool = False
    temperature: float = 1.0
    seed: int | None = None
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    n: int = 1
    tools: tuple[dict[str, Any], ...] = ()
    tool_choice: Any = None
    response_format: dict[str, Any] | None = None

    @classmethod
    def parse(cls, body: object) -> ChatRequest:
        """Check and extract the request; raises :class:`ChatInputError` on bad input."""
        if not isinstance(body, dict):
            raise ChatInputError("request body must be a JSON object")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise ChatInputError("'model' is required and must be a string")
        raw_messages = body.get("messages")
        if not isinstance(raw_messages, list) or not raw_messages:
            raise ChatInputError("'messages' must be a non-empty list")
        messages = []
        for i, m in enumerate(raw_messages):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str):
                msg = f"messages[{i}] must be an object with a string 'role'"
                raise ChatInputError(msg)
            text = _text_of(m.get("content"))
            if m.get("tool_calls"):
                # The assistant's earlier tool calls count as prompt text.
                text += json.dumps(m["tool_calls"], separators=(",", ":"))
            messages.append(Message(m["role"], text))
        temperature = body.get("temperature")
        if temperature is None:
            temperature = 1.0
        if not isinstance(temperature, int | float) or not 0 <= temperature <= 2:
            msg = f"'temperature' must be a number in [0, 2], got {temperature!r}"
            raise ChatInputError(msg)
        seed = body.get("seed")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            msg = f"'seed' must be an integer, got {seed!r}"
            raise ChatInputError(msg)
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
        if max_tokens is not None and (
            not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1
        ):
            msg = f"'max_tokens' must be a positive integer, got {max_tokens!r}"
            raise ChatInputError(msg)
        stop = body.get("stop")
        stops: tuple[str, ...]
        if stop is None:
            stops = ()
        elif isinstance(stop, str):
            stops = (stop,)
        elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
            stops = tuple(stop)
        else:
            msg = f"'stop' must be a string or a list of strings, got {stop!r}"
            raise ChatInputError(msg)
        n = body.get("n") or 1
        if not isinstance(n, int) or not 1 <= n <= 128:
            msg = f"'n' must be an integer in [1, 128], got {n!r}"
            raise ChatInputError(msg)
        tools = body.get("tools") or []
        if not isinstance(tools, list) or not all(
            isinstance(t, dict) and isinstance(t.get("function"), dict) for t in tools
        ):
            raise ChatInputError("'tools' must be a list of {'type': 'function', 'function': ...}")
        response_format = body.get("response_format")
        if response_format is not None and not isinstance(response_format, dict):
            raise ChatInputError("'response_format' must be an object")
        stream_options = body.get("stream_options") or {}
        return cls(
            model=model,
            messages=tuple(messages),
            stream=bool(body.get("stream", False)),
            include_usage=bool(
                isinstance(stream_options, dict) and stream_options.get("include_usage")
            ),
            temperature=float(temperature),
            seed=seed,
            max_tokens=max_tokens,
            stop=stops,
            n=n,
            tools=tuple(tools),
            tool_choice=body.get("tool_choice"),
            response_format=response_format,
        )

    def prompt_tokens(self) -> int:
        """Estimated prompt tokens: messages with their framing, plus tool definitions."""
        # Same sum as estimate_messages_tokens, through the cache.
        total = _TOKENS_PER_REPLY
        for m in self.messages:
            total += _TOKENS_PER_MESSAGE + _tokens(m.role) + _tokens(m.text)
        if self.tools:
            total += _tokens(json.dumps(list(self.tools), separators=(",", ":")))
        return total


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One simulated function call: its id, the function name and JSON arguments."""

    id: str
    name: str
    arguments: str

    def to_json(self) -> dict[str, Any]:
        """The ``tool_calls`` item OpenAI sends."""
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


@dataclass(frozen=True, slots=True)
class Choice:
    """One answer: text (or ``None`` with tool calls), tool calls, finish reason, tokens."""

    content: str | None
    tool_calls: tuple[ToolCall, ...]
    finish_reason: str
    completion_tokens: int


@dataclass(frozen=True)
class ChatPlan:
    """Everything the server needs to answer: model, choices and token usage."""

    model: str
    choices: tuple[Choice, ...]
    prompt_tokens: int
    stream: bool = False
    include_usage: bool = False
    pieces: tuple[tuple[str, ...], ...] = field(default=())
    cached_tokens: int = 0  # of prompt_tokens, read from the prompt cache
    reasoning_tokens: int = 0  # of completion_tokens, spent thinking (reasoning models)
    completion_tokens: int = field(init=False)  # generated tokens over all choices

    def __post_init__(self) -> None:
        object.__setattr__(
            self,
            "completion_tokens",
            sum(c.completion_tokens for c in self.choices) + self.reasoning_tokens,
        )

    @property
    def total_tokens(self) -> int:
        """Prompt plus completion tokens."""
        return self.prompt_tokens + self.completion_tokens

    def usage(self) -> dict[str, Any]:
        """The ``usage`` object of the response, with OpenAI's token details."""
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": self.reasoning_tokens,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }


class PromptCache:
    """Leading messages of earlier prompts, per model: OpenAI-style prompt caching.

    Example: ``cache.cached_tokens(request)`` is 0 the first time a long system prompt is
    sent and its tokens (rounded down to 128) when it is sent again.

    A prompt's cached tokens are those of its longest run of leading messages (with their
    framing) already sent to the same model, when that run has at least
    :data:`PROMPT_CACHE_MIN_TOKENS` tokens, rounded down to a multiple of
    :data:`PROMPT_CACHE_STEP`. Every run of leading messages of the prompt is remembered
    (up to ``max_entries``, oldest forgotten first). Not thread-safe: one event loop.
    """

    __slots__ = ("_seen", "max_entries")

    def __init__(self, max_entries: int = 100_000) -> None:
        self.max_entries = max_entries
        self._seen: dict[bytes, None] = {}

    def cached_tokens(self, request: ChatRequest) -> int:
        """Tokens of ``request``'s prompt read from the cache; remembers its prefixes."""
        digest = hashlib.blake2b(request.model.encode(), digest_size=16)
        tokens = _TOKENS_PER_REPLY
        if request.tools:
            tokens += _tokens(json.dumps(list(request.tools), separators=(",", ":")))
            digest.update(json.dumps(list(request.tools), sort_keys=True).encode())
        best = 0
        for m in request.messages:
            digest.update(b"\x00" + m.role.encode() + b"\x00" + m.text.encode())
            tokens += _TOKENS_PER_MESSAGE + _tokens(m.role) + _tokens(m.text)
            key = digest.copy().digest()
            if key in self._seen:
                best = tokens
            else:
                self._seen[key] = None
                if len(self._seen) > self.max_entries:
                    del self._seen[next(iter(self._seen))]
        if best < PROMPT_CACHE_MIN_TOKENS:
            return 0
        return best // PROMPT_CACHE_STEP * PROMPT_CACHE_STEP


def text_pieces(text: str) -> list[str]:
    """``text`` cut into stream pieces: each word with the whitespace before it."""
    pieces: list[str] = _PIECE.findall(text)
    return pieces or ([text] if text else [])


def _question_and_passages(messages: Sequence[Message]) -> tuple[str, list[str]]:
    users = [m for m in messages if m.role == "user"]
    last_user = users[-1].text if users else messages[-1].text
    labelled = _QUESTION.findall(last_user)
    question = next((q.strip() for q in reversed(labelled) if q.strip()), "")
    if not question:
        question = last_user.strip()
    passages: list[str] = []
    for m in messages:
        if m.role not in ("system", "user", "developer", "human"):
            continue
        if m.text.strip() == question:
            continue
        for block in _BLANK.split(_RULE.sub("\n\n", m.text)):
            lines = []
            for line in block.splitlines():
                if question in line or _QUESTION.match(line):
                    continue
                line = _LABEL.sub("", line).strip()
                if line:
                    lines.append(line)
            if lines:
                passages.append(" ".join(lines))
    return question, passages


def _quote(passage: str, question_words: set[str]) -> str:
    words = passage.split()
    if len(words) <= _MAX_QUOTE_WORDS:
        return passage
    sentences = _SENTENCE.split(passage)
    scores = [len(question_words & set(content_words(s))) for s in sentences]
    start = max(range(len(sentences)), key=lambda i: (scores[i], -i))
    quoted: list[str] = []
    count = 0
    for sentence in sentences[start:]:
        n = len(sentence.split())
        if quoted and count + n > _MAX_QUOTE_WORDS:
            break
        quoted.append(sentence)
        count += n
    text = " ".join(quoted)
    if count > _MAX_QUOTE_WORDS:
        text = " ".join(text.split()[:_MAX_QUOTE_WORDS]) + " ..."
    return text


# Passages repeat across requests (a RAG corpus); their word sets are kept, bounded.
_KEPT_PASSAGE_CHARS = 4096


@functools.lru_cache(maxsize=1024)
def _kept_words(passage: str) -> frozenset[str]:
    return frozenset(content_words(passage))


def _passage_words(passage: str) -> frozenset[str]:
    """``set(content_words(passage))``, remembered for passages up to 4,096 characters."""
    if len(passage) > _KEPT_PASSAGE_CHARS:
        return frozenset(content_words(passage))
    return _kept_words(passage)


def grounded_answer(messages: Sequence[Message], opening: str) -> str:
    """The answer text before stop/length cuts: the best passage quoted, or a fallback."""
    if messages and messages[-1].role in ("tool", "function"):
        result = messages[-1].text.strip()
        return f"{opening}: the tool returned {result}"
    question, passages = _question_and_passages(messages)
    if not passages:
        return f"This is a simulated answer to: {question}"
    question_words = set(content_words(question))
    best_score, best = 0, ""
    for passage in passages:
        score = len(question_words & _passage_words(passage))
        if score > best_score:
            best_score, best = score, passage
    if best_score == 0:
        return f"The context does not answer: {question}"
    return f'{opening}: "{_quote(best, question_words)}"'


def _opening(request: ChatRequest, sample: int) -> str:
    if request.temperature == 0:
        return _OPENINGS[0]
    if request.seed is not None:
        digest = hashlib.blake2b(str(request.seed).encode(), digest_size=4).digest()
        return _OPENINGS[int.from_bytes(digest, "little") % len(_OPENINGS)]
    return _OPENINGS[sample % len(_OPENINGS)]


def _cut(text: str, request: ChatRequest) -> tuple[str, str, list[str]]:
    finish = "stop"
    for stop in request.stop:
        at = text.find(stop) if stop else -1
        if at >= 0:
            text = text[:at]
    pieces = text_pieces(text)
    if request.max_tokens is not None:
        kept: list[str] = []
        used = 0
        for piece in pieces:
            cost = _tokens(piece)
            if used + cost > request.max_tokens:
                finish = "length"
                break
            kept.append(piece)
            used += cost
        pieces = kept
        text = "".join(kept)
    return text, finish, pieces


def _tool_choice(request: ChatRequest) -> dict[str, Any] | None:
    choice = request.tool_choice
    if not request.tools or choice == "none":
        return None
    if request.messages[-1].role in ("tool", "function"):
        return None
    if isinstance(choice, dict):
        wanted = (choice.get("function") or {}).get("name") or choice.get("name")
        for tool in request.tools:
            if tool["function"].get("name") == wanted:
                return tool
        msg = f"tool_choice names {wanted!r}, which is not among the tools"
        raise ChatInputError(msg)
    return request.tools[0]


def plan_chat(request: ChatRequest, *, sample: int, cached_tokens: int = 0) -> ChatPlan:
    """The answer to ``request``; ``sample`` varies sampled answers (temperature > 0, no seed).

    ``cached_tokens``: of the prompt, read from the provider's prompt cache
    (:meth:`PromptCache.cached_tokens`); reported in the usage's details.

    Raises:
        ChatInputError: ``tool_choice`` names a tool that is not given.
    """
    prompt_tokens = request.prompt_tokens()
    tool = _tool_choice(request)
    question = _question_and_passages(request.messages)[0] if tool else ""
    choices: list[Choice] = []
    all_pieces: list[tuple[str, ...]] = []
    for index in range(request.n):
        if tool is not None:
            function = tool["function"]
            arguments = json.dumps(
                example_for_schema(function.get("parameters") or {}, text=question),
                separators=(",", ":"),
            )
            call_id = (
                "call_"
                + hashlib.blake2b(
                    f"{function.get('name')}|{arguments}|{index}".encode(), digest_size=12
                ).hexdigest()
            )
            call = ToolCall(call_id, str(function.get("name", "")), arguments)
            choices.append(Choice(None, (call,), "tool_calls", _tokens(arguments) + 3))
            all_pieces.append(())
            continue
        answer = grounded_answer(request.messages, _opening(request, sample + index))
        answer = _format(answer, request.response_format)
        text, finish, pieces = _cut(answer, request)
        choices.append(Choice(text, (), finish, sum(map(_tokens, pieces))))
        all_pieces.append(tuple(pieces))
    reasoning = 0
    if _REASONING_MODEL.match(request.model):
        reasoning = _REASONING_FACTOR * sum(c.completion_tokens for c in choices)
    return ChatPlan(
        model=request.model,
        choices=tuple(choices),
        prompt_tokens=prompt_tokens,
        stream=request.stream,
        include_usage=request.include_usage,
        pieces=tuple(all_pieces),
        cached_tokens=min(cached_tokens, prompt_tokens),
        reasoning_tokens=reasoning,
    )


def _format(answer: str, response_format: dict[str, Any] | None) -> str:
    if not response_format:
        return answer
    kind = response_format.get("type")
    if kind == "json_object":
        return json.dumps({"answer": answer})
    if kind == "json_schema":
        spec = response_format.get("json_schema") or {}
        schema = spec.get("schema") if isinstance(spec, dict) else None
        return json.dumps(example_for_schema(schema or {}, text=answer))
    return answer


def _message(choice: Choice) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": choice.content, "refusal": None}
    if choice.tool_calls:
        message["tool_calls"] = [c.to_json() for c in choice.tool_calls]
    return message


def completion_body(plan: ChatPlan, completion_id: str, *, created: int) -> dict[str, Any]:
    """The JSON object of a non-streaming ``chat.completion`` response."""
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": plan.model,
        "system_fingerprint": "fp_simulator",
        "choices": [
            {"index": i, "message": _message(c), "logprobs": None, "finish_reason": c.finish_reason}
            for i, c in enumerate(plan.choices)
        ],
        "usage": plan.usage(),
    }


def _chunk(
    plan: ChatPlan, completion_id: str, created: int, choices: list[dict[str, Any]]
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": plan.model,
        "system_fingerprint": "fp_simulator",
        "choices": choices,
    }
    if plan.include_usage:
        body["usage"] = None
    return body


def stream_events(plan: ChatPlan, completion_id: str, *, created: int) -> list[tuple[bytes, int]]:
    """The SSE events of a streamed answer, each with the tokens it carries.

    The first event of each choice opens it (role, empty content, or the tool call's id and
    name); then one event per piece; then one with the finish reason; then, with
    ``include_usage``, one with ``usage`` and no choices; then ``data: [DONE]``.
    """
    events: list[tuple[dict[str, Any] | str, int]] = []
    for index, choice in enumerate(plan.choices):
        if choice.tool_calls:
            for k, call in enumerate(choice.tool_calls):
                opening = {
                    "index": k,
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": ""},
                }
                delta: dict[str, Any] = {"role": "assistant", "content": None}
                delta["tool_calls"] = [opening]
                events.append((_chunk(plan, completion_id, created, [_delta(index, delta)]), 0))
                args = {"index": k, "function": {"arguments": call.arguments}}
                events.append(
                    (
                        _chunk(
                            plan, completion_id, created, [_delta(index, {"tool_calls": [args]})]
                        ),
                        choice.completion_tokens,
                    )
                )
        else:
            first = {"role": "assistant", "content": "", "refusal": None}
            events.append((_chunk(plan, completion_id, created, [_delta(index, first)]), 0))
            for piece in plan.pieces[index]:
                delta = {"content": piece}
                events.append(
                    (
                        _chunk(plan, completion_id, created, [_delta(index, delta)]),
                        _tokens(piece),
                    )
                )
        last = _delta(index, {}, finish_reason=choice.finish_reason)
        events.append((_chunk(plan, completion_id, created, [last]), 0))
    if plan.include_usage:
        final = _chunk(plan, completion_id, created, [])
        final["usage"] = plan.usage()
        events.append((final, 0))
    encoded = [(_sse(event), tokens) for event, tokens in events]
    encoded.append((b"data: [DONE]\n\n", 0))
    return encoded


def _delta(index: int, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
    return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}


def _sse(event: dict[str, Any] | str) -> bytes:
    data = event if isinstance(event, str) else json.dumps(event, separators=(",", ":"))
    return b"data: " + data.encode() + b"\n\n"
