"""The fake Messages API itself, over plain HTTP (no claude binary needed): its answers, its
switches and its log are what the contract suite's conclusions rest on."""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from .fake_api import FakeMessagesAPI, Switches, serve, user_turns


def _post(api: FakeMessagesAPI, body: dict[str, Any], session: str = "s-1"
          ) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(
        f"{api.url}/v1/messages?beta=true", data=json.dumps(body).encode(), method="POST",
        headers={"content-type": "application/json", "x-claude-code-session-id": session,
                 "x-api-key": "k"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


BODY = {"model": "m", "stream": True, "output_config": {"effort": "max"},
        "system": [{"type": "text", "text": "base"}, {"type": "text", "text": "ROLE"}],
        "messages": [{"role": "user", "content": [{"type": "text", "text": "a"}]},
                     {"role": "assistant", "content": [{"type": "text", "text": "turns=1"}]},
                     {"role": "user", "content": "b"}]}


def test_the_answer_streams_the_number_of_user_turns(tmp_path: Path) -> None:
    with serve(log_file=tmp_path / "log.jsonl") as api:
        status, headers, payload = _post(api, BODY)
    assert status == 200 and headers["Content-Type"] == "text/event-stream"
    events = [line.removeprefix("event: ") for line in payload.decode().splitlines()
              if line.startswith("event: ")]
    assert events == ["message_start", "content_block_start", "content_block_delta",
                      "content_block_delta", "content_block_stop", "message_delta",
                      "message_stop"]
    texts = [json.loads(line[6:])["delta"]["text"] for line in payload.decode().splitlines()
             if line.startswith("data: ") and "text_delta" in line]
    assert "".join(texts) == "turns=2"
    [logged] = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert (logged["model"], logged["effort"], logged["session_header"]) == ("m", "max", "s-1")
    assert logged["system_blocks"] == ["base", "ROLE"] and logged["turns"] == 2


def test_tool_results_are_not_user_turns() -> None:
    tool_result = {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t"}]}
    assert user_turns([{"role": "user", "content": "a"}, tool_result]) == 1


@pytest.mark.parametrize(("status", "retry"), [(529, None), (529, False), (401, False),
                                               (429, None), (500, False)])
def test_error_switch(status: int, retry: bool | None) -> None:
    with serve() as api:
        api.switches = Switches(status=status, should_retry=retry)
        code, headers, payload = _post(api, BODY)
    assert code == status and json.loads(payload)["type"] == "error"
    assert headers.get("x-should-retry") == (None if retry is None else "false")


def test_half_way_stops_before_message_stop() -> None:
    with serve() as api:
        api.switches = Switches(stop_half_way=True)
        _, _, streamed = _post(api, BODY)
        with pytest.raises(http.client.IncompleteRead):  # the non-streaming retry: cut too
            _post(api, {**BODY, "stream": False})
    assert b"message_stop" not in streamed and b"content_block_delta" in streamed


def test_requests_in_flight_are_counted() -> None:
    with serve() as api:
        _post(api, BODY)
        _post(api, BODY)
    assert api.max_in_flight == 1 and api.in_flight == 0
    first, second = api.messages_requests()
    assert first["ended"] <= second["started"]
