"""OpenTelemetry traces of runs, steps and claude calls, when the ``OTEL_*`` variables ask.

A span per workflow run, per step (a fan-out's expansions and a loop's passes too) and per
claude call, with the GenAI semantic conventions' attributes on the calls. Each claude process
gets the W3C ``TRACEPARENT`` of its call's span, so the CLI's own telemetry joins the trace;
our own ``TRACEPARENT``, when a CI job or a parent process sets one, is where our spans hang.

Nothing of OpenTelemetry is imported unless tracing is asked for (an exporter or an endpoint is
set, and ``OTEL_SDK_DISABLED`` is not true) -- and then only if the ``otel`` extra is installed;
otherwise a warning says how to install it. The SDK reads the standard variables itself
(endpoint, headers, timeout, service name, resource attributes).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from typing import Any

from .observe import (
    CallInfo,
    CallOutcome,
    NullObserver,
    RunInfo,
    RunObserver,
    RunOutcome,
    StepInfo,
    StepOutcome,
    StreamEvent,
)

SERVICE_NAME = "claude-persist"
PROVIDER = "anthropic"
_TRUE = ("true", "1", "yes", "on")

_lock = threading.Lock()
_tracer: Any = None
_warned = False
#: The values of ``OTEL_TRACES_EXPORTER`` we act on; any other is refused with a warning.
EXPORTERS = ("otlp", "console", "none")


def wanted(environ: Mapping[str, str]) -> bool:
    """Whether the variables ask for traces: an exporter other than ``none``, or an OTLP
    endpoint; and the SDK not disabled."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() in _TRUE:
        return False
    exporters = [e.strip().lower() for e in environ.get("OTEL_TRACES_EXPORTER", "").split(",")
                 if e.strip()]
    if exporters:
        return any(e != "none" for e in exporters)
    return bool(environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
                or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def from_environment(environ: Mapping[str, str] | None = None,
                     notify: Callable[[str], None] | None = None) -> RunObserver:
    """The tracing observer the variables ask for, or a no-op one."""
    global _warned
    environ = os.environ if environ is None else environ
    if not wanted(environ):
        from .observe import NULL_OBSERVER

        return NULL_OBSERVER
    unknown = [e.strip() for e in environ.get("OTEL_TRACES_EXPORTER", "").split(",")
               if e.strip() and e.strip().lower() not in EXPORTERS]
    if unknown:  # no guessing at another backend: spans would go to a collector not asked for
        if notify is not None and not _warned:
            _warned = True
            notify(f"warning: OTEL_TRACES_EXPORTER={environ['OTEL_TRACES_EXPORTER']} names an "
                   f"exporter we do not have ({', '.join(unknown)}); the ones supported are "
                   f"{', '.join(EXPORTERS)}. No traces are sent.")
        from .observe import NULL_OBSERVER

        return NULL_OBSERVER
    protocol = (environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf").strip()
    if protocol != "http/protobuf":
        if notify is not None and not _warned:
            _warned = True
            notify(f"warning: OTLP protocol {protocol!r} is not supported; traces go over "
                   "http/protobuf only: set OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf and the "
                   "collector's HTTP endpoint (port 4318). No traces are sent.")
        from .observe import NULL_OBSERVER

        return NULL_OBSERVER
    try:
        tracer = _tracer_for(environ)
    except ImportError as exc:
        from .observe import NULL_OBSERVER

        if notify is not None and not _warned:
            _warned = True
            notify("warning: OTEL_* variables ask for traces, but OpenTelemetry is not "
                   f"installed ({exc.name or exc}); install it with: "
                   "pip install 'claude-persist[otel]'. No traces are sent.")
        return NULL_OBSERVER
    return TracingObserver(tracer, environ.get("TRACEPARENT"))


def _tracer_for(environ: Mapping[str, str]) -> Any:
    """One tracer provider per process, its spans flushed when the process exits."""
    global _tracer
    with _lock:
        if _tracer is not None:
            return _tracer
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

        from . import __version__

        attributes: dict[str, Any] = {"service.version": __version__}
        named = environ.get("OTEL_SERVICE_NAME") or "service.name=" in environ.get(
            "OTEL_RESOURCE_ATTRIBUTES", "")
        if not named:
            attributes["service.name"] = SERVICE_NAME
        provider = TracerProvider(resource=Resource.create(attributes))
        kinds = [e.strip().lower() for e in environ.get("OTEL_TRACES_EXPORTER", "otlp").split(",")
                 if e.strip() and e.strip().lower() != "none"] or ["otlp"]
        for kind in dict.fromkeys(kinds):
            exporter: SpanExporter
            if kind == "console":
                from opentelemetry.sdk.trace.export import ConsoleSpanExporter

                exporter = ConsoleSpanExporter()
            else:  # otlp: over HTTP with protobuf, the extra's exporter
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                    OTLPSpanExporter,
                )

                exporter = OTLPSpanExporter()
            provider.add_span_processor(BatchSpanProcessor(exporter))
        _tracer = provider.get_tracer("claude_persist", __version__)
        return _tracer


def traceparent_of(span: Any) -> dict[str, str]:
    """The W3C trace context of ``span`` as the environment of a child process."""
    from opentelemetry.trace import set_span_in_context
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier, context=set_span_in_context(span))
    env = {"TRACEPARENT": carrier["traceparent"]} if "traceparent" in carrier else {}
    if carrier.get("tracestate"):
        env["TRACESTATE"] = carrier["tracestate"]
    return env


def _drop_none(attributes: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in attributes.items() if v is not None}


class TracingObserver(NullObserver):
    """Spans for runs, steps and calls, each under the node it runs in."""

    def __init__(self, tracer: Any, traceparent: str | None = None) -> None:
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.tracer = tracer
        self._root = (TraceContextTextMapPropagator().extract({"traceparent": traceparent})
                      if traceparent else None)
        self._lock = threading.Lock()
        self._run: Any = None
        self._steps: dict[str, Any] = {}
        self._calls: dict[int, tuple[Any, StreamEvent | None]] = {}

    def _context(self, parent: Any) -> Any:
        if parent is None:
            return self._root
        from opentelemetry.trace import set_span_in_context

        return set_span_in_context(parent)

    # -- runs and steps -----------------------------------------------------------------------

    def run_started(self, run: RunInfo) -> None:
        span = self.tracer.start_span(f"run {run.workflow}", context=self._context(None),
                                      attributes={
                                          "claude_persist.run.id": run.run_id,
                                          "claude_persist.workflow.name": run.workflow,
                                          "claude_persist.workflow.path": run.path,
                                          "claude_persist.run.resumed": run.resumed,
                                          "claude_persist.run.max_parallel": run.max_parallel})
        with self._lock:
            self._run = span
            self._steps.clear()

    def run_finished(self, run: RunInfo, outcome: RunOutcome) -> None:
        from opentelemetry.trace import Status, StatusCode

        with self._lock:
            span, self._run = self._run, None
            leftovers = list(self._steps.values())
            self._steps.clear()
        for step in leftovers:  # a step that never reported its end (an abort)
            step.end()
        if span is None:
            return
        span.set_attributes(_drop_none({
            "claude_persist.run.status": outcome.status,
            "claude_persist.run.cost_usd": outcome.cost_usd,
            "claude_persist.run.duration_s": outcome.duration_s,
            "claude_persist.run.stop_reason": outcome.stop_reason}))
        if outcome.status != "succeeded":
            span.set_status(Status(StatusCode.ERROR, outcome.stop_reason or outcome.status))
        span.end()

    def _start_step(self, step: StepInfo) -> Any:
        with self._lock:
            parent = self._steps.get(step.parent) if step.parent else None
            parent = parent if parent is not None else self._run
        name = (f"pass {step.key}" if step.kind == "pass" else f"step {step.key}")
        span = self.tracer.start_span(name, context=self._context(parent), attributes=_drop_none({
            "claude_persist.step.key": step.key,
            "claude_persist.step.id": step.step_id,
            "claude_persist.step.kind": step.kind,
            "claude_persist.step.action": step.action,
            "claude_persist.session.name": step.session,
            "gen_ai.request.model": step.model,
            "claude_persist.effort": step.effort,
            "claude_persist.loop.iteration": step.iteration,
            "claude_persist.fan_out.index": step.item_index}))
        with self._lock:
            self._steps[step.key] = span
        return span

    def step_started(self, step: StepInfo) -> None:
        self._start_step(step)

    def step_finished(self, step: StepInfo, outcome: StepOutcome) -> None:
        from opentelemetry.trace import Status, StatusCode

        with self._lock:
            span = self._steps.pop(step.key, None)
        if span is None:  # skipped or reused: it ends as it starts
            span = self._start_step(step)
            with self._lock:
                self._steps.pop(step.key, None)
        span.set_attributes(_drop_none({
            "claude_persist.step.status": outcome.status,
            "claude_persist.step.attempts": outcome.attempts,
            "claude_persist.step.reused": outcome.reused,
            "claude_persist.cost_usd": outcome.cost_usd,
            "claude_persist.exit_code": outcome.exit_code,
            "gen_ai.conversation.id": outcome.session_id,
            "claude_persist.step.error": outcome.error}))
        if outcome.status == "failed":
            span.set_status(Status(StatusCode.ERROR, outcome.error or "failed"))
        span.end()

    # -- claude calls -------------------------------------------------------------------------

    def call_started(self, call: CallInfo) -> Mapping[str, str]:
        from opentelemetry.trace import SpanKind

        with self._lock:
            parent = self._steps.get(call.step) if call.step else None
        agent = call.name or call.session_id
        span = self.tracer.start_span(
            f"invoke_agent {agent}", context=self._context(parent), kind=SpanKind.CLIENT,
            attributes=_drop_none({
                "gen_ai.operation.name": "invoke_agent",
                "gen_ai.provider.name": PROVIDER,
                "gen_ai.system": PROVIDER,
                "gen_ai.agent.name": agent,
                "gen_ai.request.model": call.model,
                "gen_ai.conversation.id": call.new_session_id or call.session_id,
                "claude_persist.action": call.action,
                "claude_persist.session.name": call.name,
                "claude_persist.effort": call.effort,
                "claude_persist.step.key": call.step}))
        with self._lock:
            self._calls[id(call)] = (span, None)
        return traceparent_of(span)

    def step_event(self, call: CallInfo, event: StreamEvent) -> None:
        with self._lock:
            found = self._calls.get(id(call))
            if found is not None:
                self._calls[id(call)] = (found[0], event)

    def call_finished(self, call: CallInfo, outcome: CallOutcome) -> None:
        from opentelemetry.trace import Status, StatusCode

        with self._lock:
            span, event = self._calls.pop(id(call), (None, None))
        if span is None:
            return
        span.set_attributes(_drop_none({
            "gen_ai.conversation.id": outcome.session_id,
            "gen_ai.response.model": outcome.response_model,
            "gen_ai.usage.input_tokens": outcome.input_tokens,
            "gen_ai.usage.output_tokens": outcome.output_tokens,
            "gen_ai.usage.cache_read.input_tokens": outcome.cache_read_tokens,
            "gen_ai.usage.cache_creation.input_tokens": outcome.cache_creation_tokens,
            "claude_persist.cost_usd": outcome.cost_usd,
            "claude_persist.num_turns": outcome.num_turns,
            "claude_persist.exit_code": outcome.exit_code,
            "claude_persist.stream.events": event.events if event else None,
            "claude_persist.stream.last_tool": event.last_tool if event else None,
            "error.type": outcome.error_type}))
        if not outcome.ok:
            span.set_status(Status(StatusCode.ERROR, outcome.error or outcome.error_type))
        span.end()
