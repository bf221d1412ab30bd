"""A fake Anthropic Messages API on 127.0.0.1, for running the genuine ``claude`` binary offline.

Standard library only. It answers ``POST /v1/messages`` with Server-Sent Events whose text says how
many user turns the request carried (``turns=3``), so a test can tell that a resume really sent the
history. Every request is logged (model, effort, system text, session header, messages, and when it
started and ended). Switches make the next answers fail with a status, arrive slowly, or stop half
way.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}
ERROR_MESSAGES = {
    401: "invalid x-api-key",
    429: "Number of requests has exceeded your rate limit",
    500: "Internal server error",
    529: "Overloaded",
}


def user_turns(messages: list[dict[str, Any]]) -> int:
    """User messages that carry text typed by the user (tool results are not turns)."""

    def is_turn(message: dict[str, Any]) -> bool:
        if message.get("role") != "user":
            return False
        content = message.get("content")
        if isinstance(content, str):
            return True
        return any(isinstance(block, dict) and block.get("type") == "text"
                   for block in content or [])

    return sum(1 for message in messages if is_turn(message))


def _blocks(content: Any) -> list[str]:
    if isinstance(content, str):
        return [content]
    return [str(block.get("text", "")) for block in content or [] if isinstance(block, dict)]


def text_of(content: Any) -> str:
    """The plain text of a message's or system prompt's content."""
    if isinstance(content, str):
        return content
    parts = [block.get("text", "") for block in content or [] if isinstance(block, dict)]
    return "\n".join(part for part in parts if isinstance(part, str))


@dataclass
class Switches:
    """How the next answers go wrong. Each field applies until it is changed back."""

    status: int | None = None
    """Answer every request with this HTTP error status."""
    should_retry: bool | None = None
    """Send ``x-should-retry`` with this value on errors (None: no header)."""
    first_byte_delay: float = 0.0
    """Seconds to wait before answering at all."""
    stall_after_start: float = 0.0
    """Seconds to stall after ``message_start``, before the text (a slow answer)."""
    stop_half_way: bool = False
    """Close the connection in the middle of the text, without ``message_stop``."""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    """Tool calls to answer with, ``{"name": ..., "input": {...}}``, one per request, first
    first, each once (a request after the list is used up gets the usual text)."""


@dataclass
class FakeMessagesAPI:
    """The server, its request log and its switches; use :func:`serve` to run one."""

    switches: Switches = field(default_factory=Switches)
    requests: list[dict[str, Any]] = field(default_factory=list)
    other_requests: list[str] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""
    log_file: Path | None = None
    """When set, each request is also appended here as one JSON line, as it ends."""
    closing: threading.Event = field(default_factory=threading.Event)

    def pause(self, seconds: float) -> None:
        """Sleep, but wake at once when the server is closing."""
        self.closing.wait(seconds)

    def messages_requests(self) -> list[dict[str, Any]]:
        """The logged ``/v1/messages`` requests, in the order they arrived."""
        with self.lock:
            return list(self.requests)

    def for_session(self, session_id: str) -> list[dict[str, Any]]:
        """The logged requests whose ``x-claude-code-session-id`` header is ``session_id``."""
        return [r for r in self.messages_requests() if r["session_header"] == session_id]

    def _begin(self, record: dict[str, Any]) -> None:
        with self.lock:
            self.requests.append(record)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def _end(self, record: dict[str, Any]) -> None:
        with self.lock:
            self.in_flight -= 1
            record["ended"] = time.monotonic()
            if self.log_file is not None:
                with self.log_file.open("a", encoding="utf-8") as log:
                    log.write(json.dumps(record) + "\n")


def _usage(turns: int, output_tokens: int) -> dict[str, int]:
    """Token counts that grow with the history, so costs differ from turn to turn."""
    return {"input_tokens": 100 * turns, "output_tokens": output_tokens,
            "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


def _handler(api: FakeMessagesAPI) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_HEAD(self) -> None:  # older CLIs probe the base URL first
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_GET(self) -> None:
            self._not_found()

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            path = self.path.split("?", 1)[0]
            if path != "/v1/messages":
                with api.lock:
                    api.other_requests.append(f"POST {self.path}")
                self._not_found()
                return
            body = json.loads(raw or b"{}")
            messages = body.get("messages") or []
            record = {
                "model": body.get("model"),
                "effort": (body.get("output_config") or {}).get("effort"),
                "system_blocks": _blocks(body.get("system")),
                "system": text_of(body.get("system")),
                "session_header": self.headers.get("x-claude-code-session-id"),
                "api_key": self.headers.get("x-api-key"),
                "stream": body.get("stream"),
                "turns": user_turns(messages),
                "tools": [t.get("name") for t in body.get("tools") or [] if isinstance(t, dict)],
                "tool_results": [b.get("content") for m in messages[-1:]
                                 for b in (m.get("content") or [])
                                 if isinstance(b, dict) and b.get("type") == "tool_result"],
                "messages": [{"role": m.get("role"), "text": text_of(m.get("content"))}
                             for m in messages],
                "started": time.monotonic(),
                "ended": None,
            }
            api._begin(record)
            try:
                self._answer(body, record)
            except (BrokenPipeError, ConnectionResetError):
                record["client_gone"] = True
            finally:
                api._end(record)

        def _not_found(self) -> None:
            payload = b'{"type":"error","error":{"type":"not_found_error","message":"no route"}}'
            self.send_response(404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def _answer(self, body: dict[str, Any], record: dict[str, Any]) -> None:
            switches = api.switches
            if switches.first_byte_delay:
                api.pause(switches.first_byte_delay)
            if switches.status is not None:
                self._error(switches.status, switches.should_retry)
                return
            model = body.get("model") or "claude-fake"
            with api.lock:
                tool = switches.tool_calls.pop(0) if switches.tool_calls else None
            if tool is not None and body.get("stream"):
                record["answered_with_tool"] = tool["name"]
                self._tool_use(model, tool, record)
                return
            text = f"turns={record['turns']}"
            if not body.get("stream"):
                self._whole_message(model, text, record)
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            usage = _usage(record["turns"], output_tokens=1)
            self._send(_sse("message_start", {"type": "message_start", "message": {
                "id": f"msg_{uuid.uuid4().hex[:24]}", "type": "message", "role": "assistant",
                "model": model, "content": [], "stop_reason": None, "stop_sequence": None,
                "usage": usage}}))
            if switches.stall_after_start:
                api.pause(switches.stall_after_start)
            self._send(_sse("content_block_start", {"type": "content_block_start", "index": 0,
                                                    "content_block": {"type": "text", "text": ""}}))
            half = len(text) // 2
            self._send(_sse("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                    "delta": {"type": "text_delta",
                                                              "text": text[:half]}}))
            if switches.stop_half_way:
                return  # the connection closes here, mid-message
            self._send(_sse("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                    "delta": {"type": "text_delta",
                                                              "text": text[half:]}}))
            self._send(_sse("content_block_stop", {"type": "content_block_stop", "index": 0}))
            self._send(_sse("message_delta", {"type": "message_delta",
                                              "delta": {"stop_reason": "end_turn",
                                                        "stop_sequence": None},
                                              "usage": {"output_tokens": 5}}))
            self._send(_sse("message_stop", {"type": "message_stop"}))

        def _tool_use(self, model: str, tool: dict[str, Any], record: dict[str, Any]) -> None:
            """A streamed answer that asks the CLI to run one tool."""
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            self._send(_sse("message_start", {"type": "message_start", "message": {
                "id": f"msg_{uuid.uuid4().hex[:24]}", "type": "message", "role": "assistant",
                "model": model, "content": [], "stop_reason": None, "stop_sequence": None,
                "usage": _usage(record["turns"], output_tokens=1)}}))
            block = {"type": "tool_use", "id": f"toolu_{uuid.uuid4().hex[:24]}",
                     "name": tool["name"], "input": {}}
            self._send(_sse("content_block_start", {"type": "content_block_start", "index": 0,
                                                    "content_block": block}))
            self._send(_sse("content_block_delta", {
                "type": "content_block_delta", "index": 0,
                "delta": {"type": "input_json_delta",
                          "partial_json": json.dumps(tool.get("input") or {})}}))
            self._send(_sse("content_block_stop", {"type": "content_block_stop", "index": 0}))
            self._send(_sse("message_delta", {"type": "message_delta",
                                              "delta": {"stop_reason": "tool_use",
                                                        "stop_sequence": None},
                                              "usage": {"output_tokens": 5}}))
            self._send(_sse("message_stop", {"type": "message_stop"}))

        def _whole_message(self, model: str, text: str, record: dict[str, Any]) -> None:
            """A non-streaming answer (the CLI falls back to one after a broken stream)."""
            payload = json.dumps({
                "id": f"msg_{uuid.uuid4().hex[:24]}", "type": "message", "role": "assistant",
                "model": model, "content": [{"type": "text", "text": text}],
                "stop_reason": "end_turn", "stop_sequence": None,
                "usage": _usage(record["turns"], output_tokens=5)}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            if api.switches.stop_half_way:
                payload = payload[: len(payload) // 2]
            self._send(payload)

        def _send(self, chunk: bytes) -> None:
            self.wfile.write(chunk)
            self.wfile.flush()

        def _error(self, status: int, should_retry: bool | None) -> None:
            kind = ERROR_TYPES.get(status, "api_error")
            message = ERROR_MESSAGES.get(status, f"fake error {status}")
            payload = json.dumps({"type": "error",
                                  "error": {"type": kind, "message": message}}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            if should_retry is not None:
                self.send_header("x-should-retry", "true" if should_retry else "false")
            self.end_headers()
            self.wfile.write(payload)

    return Handler


@contextmanager
def serve(log_file: Path | None = None) -> Iterator[FakeMessagesAPI]:
    """Run a fake API on a port the OS picks, on loopback only, for the ``with`` block."""
    api = FakeMessagesAPI(log_file=log_file)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(api))
    server.daemon_threads = True
    api.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, name="fake-messages-api", daemon=True)
    thread.start()
    try:
        yield api
    finally:
        api.closing.set()
        server.shutdown()
        server.server_close()
