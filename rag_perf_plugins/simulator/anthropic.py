"""Simulated Anthropic Messages API: request translation, bodies and stream events; pure.

Example::

    body = {"model": "claude-3-5-haiku-latest", "max_tokens": 256,
            "system": [{"type": "text", "text": context, "cache_control": {"type": "ephemeral"}}],
            "messages": [{"role": "user", "content": "What is the capital of France?"}]}
    request = parse_messages(body)           # a ChatRequest the OpenAI planner answers
    plan = plan_chat(request.chat, sample=0)
    message_body(plan, request, "msg_sim1", cache=(0, 41))   # what POST /v1/messages returns
    message_events(plan, request, "msg_sim1", cache=(41, 0))  # the SSE events of a stream

The answer is the one the OpenAI route gives for the same conversation (the system prompt
becomes a system message, ``tool_use`` / ``tool_result`` blocks become tool calls and tool
messages, ``tools`` with ``input_schema`` become functions, ``stop_sequences`` become
``stop``), shaped the way Anthropic sends it: ``content`` blocks (``text``, ``tool_use``),
``stop_reason`` (``end_turn``, ``max_tokens``, ``stop_sequence``, ``tool_use``) and
``usage`` with ``input_tokens``, ``output_tokens``, ``cache_creation_input_tokens`` and
``cache_read_input_tokens``.

Prompt caching: the prefix up to the last block marked ``cache_control`` (tools, then
system, then messages, as Anthropic orders them) is the cacheable prefix; the server
remembers prefixes it has seen (:class:`PromptCache`), so the first request writes it
(``cache_creation_input_tokens``) and later ones read it (``cache_read_input_tokens``);
``input_tokens`` is the rest. ``max_tokens`` is required, as Anthropic requires it.
``thinking`` and ``top_k`` / ``top_p`` are accepted and do not change the simulated text.
Not done: images, documents, citations, server tools, batches, token counting.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from ..tokens import estimate_tokens
from .chat import ChatInputError, ChatPlan, ChatRequest

__all__ = [
    "MessagesRequest",
    "PromptCache",
    "anthropic_error_body",
    "message_body",
    "message_events",
    "parse_messages",
]

_STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
}


@dataclass(frozen=True)
class MessagesRequest:
    """One ``POST /v1/messages`` request: the OpenAI-shaped request plus Anthropic's extras.

    ``cached_prefix_tokens`` and ``prefix_digest`` describe the prompt-cache prefix (0 and
    ``""`` when no block carries ``cache_control``).
    """

    chat: ChatRequest
    stop_sequences: tuple[str, ...]
    cached_prefix_tokens: int
    prefix_digest: str


def anthropic_error_body(kind: str, message: str) -> bytes:
    """Anthropic's error envelope: ``{"type": "error", "error": {"type": ..., "message": ...}}``."""
    return json.dumps({"type": "error", "error": {"type": kind, "message": message}}).encode()


def _blocks(content: object, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if isinstance(content, list) and all(isinstance(b, dict) for b in content):
        return list(content)
    msg = f"{where}: content must be a string or a list of content blocks"
    raise ChatInputError(msg)


def _text(block: dict[str, Any]) -> str:
    return str(block.get("text", "")) if block.get("type") == "text" else ""


def parse_messages(body: object) -> MessagesRequest:
    """Check an Anthropic Messages request and translate it; :class:`ChatInputError` if bad."""
    if not isinstance(body, dict):
        raise ChatInputError("request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ChatInputError("model: Field required")
    max_tokens = body.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        msg = f"max_tokens: Field required (a positive integer), got {max_tokens!r}"
        raise ChatInputError(msg)
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise ChatInputError("messages: must be a non-empty list")
    temperature = body.get("temperature", 1.0)
    if not isinstance(temperature, int | float) or not 0 <= temperature <= 1:
        msg = f"temperature: must be a number in [0, 1], got {temperature!r}"
        raise ChatInputError(msg)
    stops = body.get("stop_sequences") or []
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise ChatInputError("stop_sequences: must be a list of strings")
    # Prompt-cache prefix: everything up to the last cache_control mark, in Anthropic's order.
    segments: list[tuple[str, bool]] = []
    tools = body.get("tools") or []
    if not isinstance(tools, list) or not all(
        isinstance(t, dict) and isinstance(t.get("name"), str) for t in tools
    ):
        raise ChatInputError("tools: must be a list of {name, description, input_schema}")
    for tool in tools:
        segments.append((json.dumps(tool, sort_keys=True), "cache_control" in tool))
    system = body.get("system")
    messages: list[dict[str, Any]] = []
    if system is not None:
        blocks = _blocks(system, "system")
        for block in blocks:
            segments.append((_text(block), "cache_control" in block))
        messages.append({"role": "system", "content": "\n\n".join(map(_text, blocks))})
    for i, m in enumerate(raw):
        if not isinstance(m, dict) or m.get("role") not in ("user", "assistant"):
            msg = f"messages.{i}.role: must be 'user' or 'assistant'"
            raise ChatInputError(msg)
        blocks = _blocks(m.get("content"), f"messages.{i}")
        texts: list[str] = []
        calls: list[dict[str, Any]] = []
        for block in blocks:
            segments.append((json.dumps(block, sort_keys=True), "cache_control" in block))
            kind = block.get("type")
            if kind == "text":
                texts.append(_text(block))
            elif kind == "tool_use":
                calls.append(
                    {
                        "id": block.get("id"),
                        "type": "function",
                        "function": {
                            "name": block.get("name"),
                            "arguments": json.dumps(block.get("input", {})),
                        },
                    }
                )
            elif kind == "tool_result":
                result = block.get("content")
                text = (
                    result
                    if isinstance(result, str)
                    else "\n".join(_text(b) for b in _blocks(result or "", "tool_result"))
                )
                messages.append(
                    {"role": "tool", "tool_call_id": block.get("tool_use_id"), "content": text}
                )
        if texts or calls:
            message: dict[str, Any] = {"role": m["role"], "content": "\n".join(texts)}
            if calls:
                message["tool_calls"] = calls
            messages.append(message)
    if not messages:
        raise ChatInputError("messages: no text or tool blocks")
    choice = body.get("tool_choice")
    openai_choice: Any = None
    if isinstance(choice, dict):
        kind = choice.get("type")
        if kind == "tool":
            openai_choice = {"type": "function", "function": {"name": choice.get("name")}}
        elif kind == "none":
            openai_choice = "none"
    chat = ChatRequest.parse(
        {
            "model": model,
            "messages": messages,
            "stream": bool(body.get("stream", False)),
            "temperature": float(temperature),
            "max_tokens": max_tokens,
            "stop": stops or None,
            "tools": [
                {
                    "type": "function",
                    "function": {
                        "name": t["name"],
                        "description": t.get("description", ""),
                        "parameters": t.get("input_schema") or {},
                    },
                }
                for t in tools
            ],
            "tool_choice": openai_choice,
        }
    )
    last_mark = max((i for i, (_, marked) in enumerate(segments) if marked), default=-1)
    prefix = [text for text, _ in segments[: last_mark + 1]]
    digest = (
        hashlib.blake2b("\x00".join([model, *prefix]).encode(), digest_size=16).hexdigest()
        if prefix
        else ""
    )
    prefix_tokens = sum(estimate_tokens(text) for text in prefix)
    return MessagesRequest(chat, tuple(stops), prefix_tokens, digest)


class PromptCache:
    """The prefixes the simulated server has cached (most recent ``capacity``).

    Example: ``cache.use(request)`` gives ``(creation_tokens, read_tokens)``: ``(n, 0)`` the
    first time a prefix is seen, ``(0, n)`` after. No TTL (the simulator's runs are short).
    """

    def __init__(self, capacity: int = 4096) -> None:
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._capacity = capacity

    def use(self, request: MessagesRequest) -> tuple[int, int]:
        """Creation and read token counts for ``request``'s cacheable prefix."""
        if not request.prefix_digest:
            return 0, 0
        if request.prefix_digest in self._seen:
            self._seen.move_to_end(request.prefix_digest)
            return 0, request.cached_prefix_tokens
        self._seen[request.prefix_digest] = None
        if len(self._seen) > self._capacity:
            self._seen.popitem(last=False)
        return request.cached_prefix_tokens, 0


def _usage(plan: ChatPlan, cache: tuple[int, int], *, output: bool = True) -> dict[str, int]:
    creation, read = cache
    return {
        "input_tokens": max(0, plan.prompt_tokens - creation - read),
        "cache_creation_input_tokens": creation,
        "cache_read_input_tokens": read,
        "output_tokens": plan.completion_tokens if output else 1,
    }


def _stop(plan: ChatPlan) -> tuple[str, str | None]:
    # The planner does not say whether a stop string cut the answer: both read "end_turn".
    return _STOP_REASONS.get(plan.choices[0].finish_reason, "end_turn"), None


def _content(plan: ChatPlan) -> list[dict[str, Any]]:
    choice = plan.choices[0]
    blocks: list[dict[str, Any]] = []
    if choice.content:
        blocks.append({"type": "text", "text": choice.content})
    for call in choice.tool_calls:
        blocks.append(
            {
                "type": "tool_use",
                "id": "toolu_" + call.id.removeprefix("call_"),
                "name": call.name,
                "input": json.loads(call.arguments),
            }
        )
    return blocks


def message_body(
    plan: ChatPlan, request: MessagesRequest, message_id: str, *, cache: tuple[int, int]
) -> dict[str, Any]:
    """The JSON object of a non-streamed ``message`` response."""
    reason, sequence = _stop(plan)
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": plan.model,
        "content": _content(plan),
        "stop_reason": reason,
        "stop_sequence": sequence,
        "usage": _usage(plan, cache),
    }


def _event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: %s\ndata: %s\n\n" % (
        name.encode(),
        json.dumps(data, separators=(",", ":")).encode(),
    )


def message_events(
    plan: ChatPlan, request: MessagesRequest, message_id: str, *, cache: tuple[int, int]
) -> list[tuple[bytes, int]]:
    """The SSE events of a streamed answer, each with the tokens it carries.

    ``message_start`` (usage with the input side), per block ``content_block_start``,
    deltas (``text_delta`` per piece, one ``input_json_delta`` per tool call),
    ``content_block_stop``, then ``message_delta`` (stop reason, and the whole usage:
    Anthropic's counts there are cumulative, input and prompt-cache tokens included, and
    ``langchain-anthropic`` reads a stream's usage from that event alone) and
    ``message_stop``.
    """
    reason, sequence = _stop(plan)
    start = message_body(plan, request, message_id, cache=cache)
    start.update(content=[], stop_reason=None, stop_sequence=None)
    start["usage"] = _usage(plan, cache, output=False)
    events: list[tuple[bytes, int]] = [
        (_event("message_start", {"type": "message_start", "message": start}), 0)
    ]
    choice = plan.choices[0]
    index = 0
    if choice.content:
        events.append(
            (
                _event(
                    "content_block_start",
                    {
                        "type": "content_block_start",
                        "index": index,
                        "content_block": {"type": "text", "text": ""},
                    },
                ),
                0,
            )
        )
        for piece in plan.pieces[0]:
            delta = {"type": "text_delta", "text": piece}
            events.append(
                (
                    _event(
                        "content_block_delta",
                        {"type": "content_block_delta", "index": index, "delta": delta},
                    ),
                    estimate_tokens(piece),
                )
            )
        events.append(
            (_event("content_block_stop", {"type": "content_block_stop", "index": index}), 0)
        )
        index += 1
    for block in _content(plan):
        if block["type"] != "tool_use":
            continue
        opening = {**block, "input": {}}
        events.append(
            (
                _event(
                    "content_block_start",
                    {"type": "content_block_start", "index": index, "content_block": opening},
                ),
                0,
            )
        )
        partial = json.dumps(block["input"], separators=(",", ":"))
        delta = {"type": "input_json_delta", "partial_json": partial}
        events.append(
            (
                _event(
                    "content_block_delta",
                    {"type": "content_block_delta", "index": index, "delta": delta},
                ),
                choice.completion_tokens,
            )
        )
        events.append(
            (_event("content_block_stop", {"type": "content_block_stop", "index": index}), 0)
        )
        index += 1
    events.append(
        (
            _event(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": reason, "stop_sequence": sequence},
                    "usage": _usage(plan, cache),
                },
            ),
            0,
        )
    )
    events.append((_event("message_stop", {"type": "message_stop"}), 0))
    return events
