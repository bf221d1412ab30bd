"""OpenTelemetry: spans received by a real OTLP/HTTP receiver on 127.0.0.1, sent by the SDK's
own exporter from real ``claude-persist`` and ``inv`` processes driving the fake CLI; and
nothing of OpenTelemetry imported when the variables do not ask for it."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from .conftest import CP_PREFIX, INV_PREFIX, Runner

OUTER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
OUTER_SPAN = "00f067aa0ba902b7"


@dataclass
class Span:
    name: str
    trace_id: str
    span_id: str
    parent: str
    kind: int
    status: int
    attributes: dict[str, Any]
    resource: dict[str, Any]


def _values(pairs: Any) -> dict[str, Any]:
    found = {}
    for pair in pairs:
        kind = pair.value.WhichOneof("value")
        found[pair.key] = getattr(pair.value, kind) if kind else None
    return found


@dataclass
class Receiver:
    """An OTLP/HTTP traces endpoint: decodes each ExportTraceServiceRequest it is sent."""

    spans: list[Span] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    endpoint: str = ""

    def handler(self) -> type[BaseHTTPRequestHandler]:
        # Imported here: only the processes that run these tests need OTLP's messages.
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
            ExportTraceServiceResponse,
        )

        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                with receiver.lock:
                    receiver.paths.append(self.path)
                    for resource_spans in request.resource_spans:
                        resource = _values(resource_spans.resource.attributes)
                        for scope in resource_spans.scope_spans:
                            for span in scope.spans:
                                receiver.spans.append(Span(
                                    span.name, span.trace_id.hex(), span.span_id.hex(),
                                    span.parent_span_id.hex(), span.kind, span.status.code,
                                    _values(span.attributes), resource))
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[Receiver]:
    found = Receiver()
    server = ThreadingHTTPServer(("127.0.0.1", 0), found.handler())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    found.endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    for key in [k for k in os.environ if k.startswith("OTEL_") or k == "TRACEPARENT"]:
        monkeypatch.delenv(key)
    try:
        yield found
    finally:
        server.shutdown()
        server.server_close()


def otel_env(receiver: Receiver, **more: str) -> dict[str, str]:
    return {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_TRACES_EXPORTER": "otlp",
            **more}


WORKFLOW = """\
version: 1
name: traced
steps:
  - id: plan
    create: planner
    model: sonnet
    effort: high
    prompt: "Plan. [fake tools=Read,Edit]"
  - id: each
    for_each: ["a", "b"]
    create: impl-${{ item }}
    prompt: Do ${{ item }}.
  - id: passes
    loop:
      max_iterations: 2
      until: loop.iteration == 2
      steps:
        - {id: fix, resume: planner, prompt: "Pass ${{ loop.iteration }}"}
        - id: check
          run: "true"
"""


def by_name(spans: list[Span]) -> dict[str, list[Span]]:
    found: dict[str, list[Span]] = {}
    for span in spans:
        found.setdefault(span.name, []).append(span)
    return found


def traceparents(fake_claude: Any) -> list[str]:
    """The trace and parent span ids each fake call was given (W3C: version-trace-span-flags;
    the flags may carry the random-trace-id bit besides sampled)."""
    found = []
    for line in fake_claude.log_file.read_text().splitlines():
        record = json.loads(line)
        if record["event"] == "start":
            version, trace, span, flags = record["traceparent"].split("-")
            assert version == "00" and int(flags, 16) & 1  # sampled
            found.append(f"{trace}-{span}")
    return found


def test_a_run_sends_nested_spans_and_claude_joins_the_trace(
        workspace: Path, fake_claude: Any, receiver: Receiver) -> None:
    (workspace / "wf.yml").write_text(WORKFLOW)
    ran = Runner("claude-persist", CP_PREFIX, workspace)(
        "run", "wf.yml", env=otel_env(receiver, OTEL_RESOURCE_ATTRIBUTES="deployment.env=ci",
                                      TRACEPARENT=f"00-{OUTER_TRACE}-{OUTER_SPAN}-01"),
        timeout=120)
    assert ran.code == 0, ran.err
    assert set(receiver.paths) == {"/v1/traces"}
    spans = receiver.spans
    names = by_name(spans)
    ids = {s.span_id: s for s in spans}

    def parent(span: Span) -> str:
        return ids[span.parent].name

    # Everything is one trace, under the TRACEPARENT our process was given.
    assert {s.trace_id for s in spans} == {OUTER_TRACE}
    (run,) = names["run traced"]
    assert run.parent == OUTER_SPAN
    assert run.attributes["claude_persist.run.status"] == "succeeded"
    assert run.attributes["claude_persist.run.cost_usd"] == pytest.approx(5 * 0.0125)
    assert run.resource["service.name"] == "claude-persist"
    assert run.resource["deployment.env"] == "ci"
    # run > step > call
    (plan,) = names["step plan"]
    assert parent(plan) == "run traced" and plan.attributes["claude_persist.step.status"] == \
        "succeeded"
    calls = [s for s in spans if s.name.startswith("invoke_agent ")]
    assert len(calls) == 5  # plan, two expansions, two passes' fix
    plan_call = next(s for s in calls if s.parent == plan.span_id)
    assert plan_call.name == "invoke_agent planner" and plan_call.kind == 3  # CLIENT
    attrs = plan_call.attributes
    assert attrs["gen_ai.operation.name"] == "invoke_agent"
    assert attrs["gen_ai.provider.name"] == "anthropic" and attrs["gen_ai.system"] == "anthropic"
    assert attrs["gen_ai.request.model"] == "sonnet"
    assert attrs["gen_ai.response.model"].startswith("claude-sonnet")
    assert attrs["claude_persist.effort"] == "high"
    assert attrs["gen_ai.usage.input_tokens"] > 0 and attrs["gen_ai.usage.output_tokens"] == 12
    assert attrs["claude_persist.cost_usd"] == pytest.approx(0.0125)
    assert attrs["claude_persist.exit_code"] == 0
    assert attrs["claude_persist.stream.last_tool"] == "Edit"
    assert attrs["claude_persist.stream.events"] >= 4
    assert attrs["gen_ai.conversation.id"] == plan.attributes["gen_ai.conversation.id"]
    # fan-out: run > each > each[i] > call
    (each,) = names["step each"]
    assert parent(each) == "run traced" and each.attributes["claude_persist.step.kind"] == \
        "for_each"
    expansions = sorted(names["step each[0]"] + names["step each[1]"],
                        key=lambda s: s.attributes["claude_persist.fan_out.index"])
    assert [parent(s) for s in expansions] == ["step each", "step each"]
    assert [s.attributes["claude_persist.fan_out.index"] for s in expansions] == [0, 1]
    for expansion, item in zip(expansions, "ab", strict=True):
        (call,) = [s for s in calls if s.parent == expansion.span_id]
        assert call.name == f"invoke_agent impl-{item}"
    # loop: run > passes > passes#n > fix > call
    (loop,) = names["step passes"]
    assert parent(loop) == "run traced"
    passes = sorted(names["pass passes#1"] + names["pass passes#2"],
                    key=lambda s: s.attributes["claude_persist.loop.iteration"])
    assert [parent(s) for s in passes] == ["step passes", "step passes"]
    fixes = names["step fix"]
    checks = names["step check"]
    assert sorted(ids[s.parent].name for s in fixes) == ["pass passes#1", "pass passes#2"]
    assert sorted(ids[s.parent].name for s in checks) == ["pass passes#1", "pass passes#2"]
    for fix in fixes:
        (call,) = [s for s in calls if s.parent == fix.span_id]
        assert call.attributes["claude_persist.action"] == "resume"
    assert {s.parent for s in calls} <= {s.span_id for s in spans if s.name.startswith("step ")}
    # The fake CLI saw each call span's own trace context.
    seen = traceparents(fake_claude)
    assert sorted(seen) == sorted(f"{s.trace_id}-{s.span_id}" for s in calls)


def test_create_and_resume_get_a_call_span_each_outside_workflows(
        workspace: Path, fake_claude: Any, receiver: Receiver) -> None:
    inv = Runner("inv", INV_PREFIX, workspace)
    env = otel_env(receiver, OTEL_SERVICE_NAME="nightly")
    ran = inv("create", "-n", "solo", "-p", "Hello.", "--effort", "low", env=env)
    assert ran.code == 0, ran.err
    ran = inv("resume", "-n", "solo", "-p", "Fail. [fake error=500]", env=env)
    assert ran.code == 1
    created, failed = sorted(receiver.spans, key=lambda s: s.attributes["claude_persist.action"])
    assert created.name == failed.name == "invoke_agent solo"
    assert created.parent == failed.parent == ""  # roots: no run, no outer trace
    assert created.trace_id != failed.trace_id
    assert created.resource["service.name"] == "nightly"
    assert created.status == 0 and created.attributes["claude_persist.exit_code"] == 0
    assert created.attributes["claude_persist.effort"] == "low"
    assert failed.status == 2  # ERROR
    assert failed.attributes["claude_persist.exit_code"] == 1
    assert failed.attributes["error.type"] == "ClaudeCallError"
    assert failed.attributes["gen_ai.conversation.id"] == \
        created.attributes["gen_ai.conversation.id"]
    assert traceparents(fake_claude) == [f"{s.trace_id}-{s.span_id}" for s in (created, failed)]


# -- nothing imported unless asked ----------------------------------------------------------------

PROBE = """
import json, os, sys
from pathlib import Path
from claude_persist import Sessions, run_workflow
{block}
for number, env in enumerate(json.loads(sys.argv[1])):  # each case in a folder of its own
    for key in [k for k in os.environ if k.startswith("OTEL_")]:
        del os.environ[key]
    os.environ.update(env)
    folder = Path(f"case-{{number}}")
    folder.mkdir()
    sessions = Sessions(folder)
    sessions.create("probe", "Hi.")
    (folder / "wf.yml").write_text(
        "version: 1\\nsteps:\\n  - {{id: a, resume: probe, prompt: Again.}}\\n")
    run_workflow(folder / "wf.yml", workspace=sessions, progress=open("/dev/null", "w"))
    print(sorted(m for m in sys.modules if m.split(".")[0] == "opentelemetry"))
"""

BLOCK_OTEL = """
import importlib.abc
class Missing(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "opentelemetry":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, Missing())
"""


def probe(workspace: Path, *envs: dict[str, str], block: str = ""
          ) -> subprocess.CompletedProcess[str]:
    """One process that, for each of ``envs`` in turn (the OTEL_ variables it sets, all
    others unset), creates a session and runs a workflow, then prints the OpenTelemetry
    modules it has imported so far."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    return subprocess.run([sys.executable, "-c", PROBE.format(block=block), json.dumps(envs)],
                          cwd=workspace, env=clean, capture_output=True, text=True, timeout=120)


def test_without_the_variables_nothing_of_opentelemetry_is_imported(
        workspace: Path, fake_claude: Any) -> None:
    # One process for every case: a case that imported any of it would show in its own line
    # and in every line after it.
    done = probe(workspace,
                 {},
                 {"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"},
                 {"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"},
                 {"OTEL_SERVICE_NAME": "x", "OTEL_METRICS_EXPORTER": "otlp"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines() == ["[]"] * 4
    assert len(fake_claude.calls()) == 8  # each case did call claude, twice


def test_with_the_variables_the_sdk_is_used(workspace: Path, fake_claude: Any) -> None:
    done = probe(workspace, {"OTEL_TRACES_EXPORTER": "console"})
    assert done.returncode == 0, done.stderr
    assert "opentelemetry.sdk.trace" in done.stdout
    assert '"name": "invoke_agent probe"' in done.stdout  # the console exporter's spans


def test_without_the_extra_a_warning_says_how_to_install_it(workspace: Path,
                                                              fake_claude: Any) -> None:
    done = probe(workspace, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"},
                 block=BLOCK_OTEL)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"
    assert done.stderr.count("pip install 'claude-persist[otel]'") == 1


def test_an_otlp_protocol_other_than_http_protobuf_is_refused_with_a_warning(
        workspace: Path, fake_claude: Any) -> None:
    done = probe(workspace, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9",
                             "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"
    assert done.stderr.count("OTLP protocol 'grpc' is not supported") == 1


@pytest.mark.parametrize("value", ["zipkin", "otlp,jaeger", "Prometheus"])
def test_an_exporter_we_do_not_have_is_refused_with_one_warning(
        monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    from claude_persist import telemetry
    from claude_persist.observe import NULL_OBSERVER

    monkeypatch.setattr(telemetry, "_warned", False)
    said: list[str] = []
    env = {"OTEL_TRACES_EXPORTER": value}
    for _ in range(2):
        assert telemetry.from_environment(env, said.append) is NULL_OBSERVER
    assert len(said) == 1 and f"OTEL_TRACES_EXPORTER={value} names an exporter" in said[0]
    assert "No traces are sent" in said[0]
