"""The figures users feel, each measured against its baseline from the same run.

Every function takes its sizes as arguments (the benchmark uses the full ones, ``tests/stress``
short ones) and returns a :class:`Figure`: a ratio or a count against a target, with the absolute
times as context.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

from .lab import (
    CLAUDE_PERSIST,
    FAKE,
    INV,
    PYTHON,
    Lab,
    RssSampler,
    interleaved,
    median,
    percentile,
    wall,
)


@dataclass
class Figure:
    """One measured figure: ``value`` against ``target`` (``ok`` says whether it is met)."""

    key: str
    what: str
    value: float
    unit: str
    target: str
    ok: bool
    baseline: str
    context: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


# -- per-call overhead -------------------------------------------------------------------------


def call_overhead(rounds: int = 20) -> list[Figure]:
    """``claude-persist resume`` and ``inv resume`` through a fake that answers at once, against
    the same fake called directly; the overhead is compared with Python's own cost of starting
    and importing invoke."""
    lab = Lab.make("overhead")
    lab.cp("create", "-n", "bench")
    sid = lab.session_id("bench")
    direct = [*FAKE, "-p", "--output-format=stream-json", "--verbose", f"--resume={sid}"]
    times = interleaved({
        "python -c 'import invoke, filelock'":
            lambda: lab.run([PYTHON, "-c", "import invoke, filelock"]),
        "fake claude, direct": lambda: lab.run(direct, input="hi"),
        "claude-persist resume": lambda: lab.cp("resume", "-n", "bench", "-p", "hi"),
        "inv resume": lambda: lab.run([*INV, "resume", "-n", "bench", "-p", "hi"]),
    }, rounds)
    medians = {key: median(values) for key, values in times.items()}
    figures = []
    for face in ("claude-persist resume", "inv resume"):
        overhead = medians[face] - medians["fake claude, direct"]
        # Each round's ratio from that round's own three timings, then the median of those:
        # a busy moment of the machine then moves one round, not the numerator alone.
        ratio = median([(own - fake) / floor for own, fake, floor in zip(
            times[face], times["fake claude, direct"], times["python -c 'import invoke, filelock'"],
            strict=True)])
        figures.append(Figure(
            key=f"overhead-{face.split()[0]}",
            what=f"per-call overhead of {face} (fake answering at once)",
            value=round(ratio, 2), unit="x", target="<= 1.3x", ok=ratio <= 1.3,
            baseline="(face - fake called directly) / python -c 'import invoke, filelock', "
                     "median of the rounds' ratios",
            context={"median_ms": {k: _ms(v) for k, v in medians.items()},
                     "overhead_ms": _ms(overhead), "rounds": rounds}))
    return figures


# -- streaming ---------------------------------------------------------------------------------


def stream_latency(lines: int = 300, interval: float = 0.005) -> Figure:
    """Delay from the fake printing a stream line to the line on our stdout (the fake stamps
    each line with the time it printed it)."""
    lab = Lab.make("latency")
    lab.cp("create", "-n", "live")
    proc = subprocess.Popen(
        [*CLAUDE_PERSIST, "resume", "-n", "live", "--stream",
         "-p", f"[fake lines={lines} line_interval={interval}] go"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=lab.workspace,
        env=lab.env, bufsize=1)
    assert proc.stdout is not None
    delays = []
    for line in proc.stdout:
        arrived = time.time()
        emitted = json.loads(line).get("fake_emitted_at")
        if isinstance(emitted, float):
            delays.append(arrived - emitted)
    proc.wait()
    if proc.returncode != 0 or len(delays) < lines:
        raise RuntimeError(f"streaming run failed ({proc.returncode}, {len(delays)} lines)")
    middle = median(delays)
    return Figure(
        key="stream-latency", what="stream pass-through: fake prints a line -> our stdout",
        value=_ms(middle), unit="ms median", target="< 5 ms", ok=middle < 0.005,
        baseline="the fake's own timestamp on each line",
        context={"lines": len(delays), "p95_ms": _ms(percentile(delays, 0.95)),
                 "max_ms": _ms(max(delays))})


def _stream_peak_rss(lab: Lab, megabytes: int, line_bytes: int = 2000) -> tuple[float, float]:
    count = megabytes * 2**20 // line_bytes
    proc = subprocess.Popen(
        [*CLAUDE_PERSIST, "resume", "-n", "big", "--stream",
         "-p", f"[fake lines={count} line_bytes={line_bytes}] flood"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=lab.workspace, env=lab.env)
    assert proc.stdout is not None
    passed = 0
    started = time.perf_counter()
    with RssSampler(proc.pid) as rss:
        while chunk := proc.stdout.read1(1 << 20):  # type: ignore[attr-defined]
            passed += len(chunk)
    proc.wait()
    took = time.perf_counter() - started
    if proc.returncode != 0 or passed < megabytes * 2**20:
        raise RuntimeError(f"flood run failed ({proc.returncode}, {passed} bytes)")
    return rss.peak_mb, passed / 2**20 / took


def stream_memory(megabytes: int = 200, small: int = 2) -> Figure:
    """Peak memory of ``resume --stream`` while ``megabytes`` of stream lines pass, against the
    same with ``small`` megabytes."""
    lab = Lab.make("memory")
    lab.cp("create", "-n", "big")
    small_peak, _ = _stream_peak_rss(lab, small)
    big_peak, rate = _stream_peak_rss(lab, megabytes)
    ratio = big_peak / small_peak
    return Figure(
        key="stream-memory", what=f"peak RSS while {megabytes} MB of stream lines pass",
        value=round(ratio, 2), unit="x", target="flat (<= 1.1x)", ok=ratio <= 1.1,
        baseline=f"the same command passing {small} MB",
        context={"peak_mb": round(big_peak, 1), "baseline_peak_mb": round(small_peak, 1),
                 "throughput_mb_s": round(rate, 1)})


# -- workflows ---------------------------------------------------------------------------------


def _workflow(lab: Lab, name: str, steps: list[str]) -> str:
    path = lab.workspace / f"{name}.yml"
    path.write_text("version: 1\nname: " + name + "\nsteps:\n" + "\n".join(steps) + "\n")
    return path.name


def _run_report(lab: Lab, workflow: str, *extra: str) -> tuple[float, dict[str, Any]]:
    started = time.perf_counter()
    ran = lab.cp("run", workflow, "--json", *extra)
    took = time.perf_counter() - started
    return took, json.loads(ran.stdout)


def parallel_workflow(sessions: int = 8, step_seconds: float = 1.0, runs: int = 3) -> Figure:
    """A workflow of independent sessions with one ``step_seconds`` step each, all at once,
    against its critical path: that one step, called directly."""
    lab = Lab.make("parallel")
    prompt = f"[fake delay={step_seconds}] work"
    critical = median([wall(lambda: lab.run(
        [*FAKE, "-p", "--output-format=stream-json", "--verbose"], input=prompt))
        for _ in range(runs)])

    def all_at_once() -> None:  # the same calls started together, no claude-persist at all
        procs = [subprocess.Popen([*FAKE, "-p", "--output-format=stream-json", "--verbose"],
                                  stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                  cwd=lab.workspace, env=lab.env) for _ in range(sessions)]
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write(prompt.encode())
            proc.stdin.close()
        for proc in procs:
            proc.wait()

    together = median([wall(all_at_once) for _ in range(runs)])
    steps = [f"  - {{id: s{i}, create: s{i}, prompt: \"{prompt}\"}}" for i in range(sessions)]
    workflow = _workflow(lab, "parallel", steps)
    ran = [_run_report(lab, workflow, "--max-parallel", str(sessions)) for _ in range(runs)]
    took = median([whole for whole, _ in ran])
    run_seconds = median([float(report["duration_s"]) for _, report in ran])
    ratio = run_seconds / critical
    return Figure(
        key="workflow-parallel",
        what=f"workflow of {sessions} independent {step_seconds:g} s steps, "
             f"--max-parallel {sessions}",
        value=round(ratio, 2), unit="x", target="<= 1.15x", ok=ratio <= 1.15,
        baseline=f"the critical path: one such step, run directly (medians of {runs})",
        context={"run_s": round(run_seconds, 3), "critical_path_s": round(critical, 3),
                 f"{sessions}_direct_calls_at_once_s": round(together, 3),
                 "whole_command_s": round(took, 3), "cpus": os.cpu_count()})


def sequential_workflow(steps: int = 50, rounds: int = 3) -> Figure:
    """A workflow of ``steps`` short steps on one session, against as many direct fake calls;
    the two alternate for ``rounds`` rounds and the medians are compared (one pair alone moves
    by several ms a step on a busy machine)."""
    lab = Lab.make("sequential")
    transcripts_home = lab.root / "claude-config"  # where the fake keeps its transcripts
    workflows = []
    for number in range(rounds + 1):  # one more for the warm-up
        lines = [f'  - {{id: s0, create: one-{number}, prompt: "step 0"}}']
        lines += [f'  - {{id: s{i}, resume: one-{number}, prompt: "step {i}"}}'
                  for i in range(1, steps)]
        workflows.append(_workflow(lab, f"sequential-{number}", lines))
    in_run: list[float] = []

    def direct_calls() -> None:
        sid = str(uuid.uuid4())
        lab.run([*FAKE, "-p", "--output-format=stream-json", "--verbose",
                 f"--session-id={sid}"], input="step 0")
        for index in range(1, steps):
            lab.run([*FAKE, "-p", "--output-format=stream-json", "--verbose",
                     f"--resume={sid}"], input=f"step {index}")

    def workflow_run() -> None:
        _took, report = _run_report(lab, workflows.pop())
        in_run.append(float(report["duration_s"]))

    times = interleaved({"direct": direct_calls, "workflow": workflow_run}, rounds)
    assert transcripts_home.is_dir()
    direct, took = median(times["direct"]), median(times["workflow"])
    per_step = (took - direct) / steps
    return Figure(
        key="workflow-sequential", what=f"workflow of {steps} short steps on one session",
        value=_ms(per_step), unit="ms per step", target="< 10 ms", ok=per_step < 0.010,
        baseline=f"{steps} direct fake calls (median of {rounds} alternating rounds)",
        context={"workflow_s": round(took, 3), "direct_s": round(direct, 3),
                 "run_s": round(median(in_run[1:]), 3),
                 "per_step_in_run_ms": _ms((median(in_run[1:]) - direct) / steps),
                 "rounds": rounds})


def _direct_fan(lab: Lab, count: int, parallel: int) -> None:
    """``count`` fake calls, each creating a session, ``parallel`` at a time: no
    claude-persist at all."""
    from concurrent.futures import ThreadPoolExecutor

    def one(index: int) -> None:
        lab.run([*FAKE, "-p", "--output-format=stream-json", "--verbose",
                 f"--session-id={uuid.uuid4()}"], input=f"element {index}")

    with ThreadPoolExecutor(max_workers=parallel) as pool:
        list(pool.map(one, range(count)))


def _in_process_fan(count: int, parallel: int) -> tuple[float, float]:
    """Seconds of a ``count``-element fan-out run in process (no processes: only our own
    cost), for the shape of that cost as the fan-out grows; and the seconds spent inside the
    session calls (``Sessions.create``: the mapping file's update), summed over the calls."""
    import io

    from claude_persist import Sessions
    from claude_persist.testing import InProcessClaude
    from claude_persist.workflow import RunSettings, execute, load, run
    from claude_persist.workflow.report import ProgressPrinter

    in_calls: list[float] = []
    real_call = execute.call_step

    def timed_call(*args: Any, **kwargs: Any) -> Any:
        began = time.perf_counter()
        try:
            return real_call(*args, **kwargs)
        finally:
            in_calls.append(time.perf_counter() - began)

    lab = Lab.make("fan-in-process")
    path = lab.workspace / "fan.yml"
    path.write_text(_fan_text(count))
    previous = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = lab.env["TMPDIR"]
    import tempfile

    tempfile.tempdir = None
    execute.call_step = timed_call
    try:
        sessions = Sessions(lab.workspace, turn_runner=InProcessClaude())
        workflow, plan = load(path, sessions)
        started = time.perf_counter()
        state, _ = run(workflow, plan, sessions, RunSettings(max_parallel=parallel),
                       ProgressPrinter(workflow, io.StringIO()))
        took = time.perf_counter() - started
    finally:
        execute.call_step = real_call
        if previous is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = previous
        tempfile.tempdir = None
    assert state.status == "succeeded", state.stop_reason
    return took, sum(in_calls)


def _fan_text(count: int) -> str:
    items = ", ".join(str(i) for i in range(count))
    return textwrap.dedent(f"""\
        version: 1
        name: fan
        steps:
          - id: fan
            for_each: [{items}]
            create: f-${{{{ item }}}}
            prompt: element ${{{{ item }}}}
        """)


def fan_out(elements: int = 1000, parallel: int = 16, small: int = 250, rounds: int = 2
            ) -> list[Figure]:
    """A ``for_each`` of ``elements`` at ``max_parallel`` ``parallel`` through the fake CLI
    answering at once, against as many direct fake calls at the same parallelism (alternating,
    ``rounds`` rounds, medians): the cost per expansion and the run's peak memory. Then, in
    process and one at a time, the workflow's own cost per expansion -- the run minus the time
    inside ``Sessions.create``, which updates the session mapping file -- and how it grows from
    ``small`` to ``elements`` (flat when the run state written per step is O(1))."""
    lab = Lab.make("fan-out")
    workflows = []
    for number in range(rounds):
        (lab.workspace / f"fan-{number}.yml").write_text(_fan_text(elements))
        workflows.append(f"fan-{number}.yml")
    peaks: list[float] = []
    in_run: list[float] = []

    def workflow_run() -> None:
        proc = subprocess.Popen([*CLAUDE_PERSIST, "run", workflows.pop(), "--json",
                                 "--max-parallel", str(parallel)], cwd=lab.workspace,
                                env=lab.env, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True)
        with RssSampler(proc.pid) as rss:
            out, _ = proc.communicate()
        report = json.loads(out)
        assert report["status"] == "succeeded"
        assert report["totals"]["succeeded"] == elements + 1
        peaks.append(rss.peak_mb)
        in_run.append(float(report["duration_s"]))

    times = interleaved({"direct": lambda: _direct_fan(lab, elements, parallel),
                         "workflow": workflow_run}, rounds, warmup=0)
    direct, took = median(times["direct"]), median(times["workflow"])
    per_expansion = (took - direct) / elements
    machinery: dict[int, float] = {}
    sessions_ms: dict[int, float] = {}
    for count in (small, elements):
        alone, in_sessions = _in_process_fan(count, 1)
        machinery[count] = (alone - in_sessions) / count
        sessions_ms[count] = _ms(in_sessions / count)
    growth = machinery[elements] / machinery[small]
    return [
        Figure(key="fan-out-overhead",
               what=f"for_each of {elements} at --max-parallel {parallel}",
               value=_ms(per_expansion), unit="ms per expansion", target="< 5 ms",
               ok=per_expansion < 0.005,
               baseline=f"{elements} direct fake calls, {parallel} at a time (medians of "
                        f"{rounds} alternating rounds)",
               context={"workflow_s": [round(t, 3) for t in times["workflow"]],
                        "direct_s": [round(t, 3) for t in times["direct"]],
                        "run_s": in_run, "cpus": os.cpu_count()}),
        Figure(key="fan-out-machinery",
               what=f"the workflow's own cost per expansion ({elements}, in process, one at "
                    "a time)",
               value=_ms(machinery[elements]), unit="ms per expansion", target="< 5 ms",
               ok=machinery[elements] < 0.005,
               baseline="the run minus the time inside Sessions.create (the session "
                        "mapping's update), same run",
               context={f"sessions_create_ms_each_at_{n}": ms for n, ms in sessions_ms.items()}),
        Figure(key="fan-out-memory", what=f"peak memory of that run ({elements} expansions)",
               value=round(max(peaks), 1), unit="MB", target="< 100 MB",
               ok=max(peaks) < 100, baseline="none"),
        Figure(key="fan-out-growth",
               what=f"the workflow's own cost per expansion, {elements} vs {small} elements",
               value=round(growth, 2), unit="x", target="<= 1.5x (O(1) state per step)",
               ok=growth <= 1.5, baseline=f"the same at {small} elements",
               context={f"ms_each_at_{n}": _ms(v) for n, v in machinery.items()}),
    ]


# -- a big mapping file --------------------------------------------------------------------------


def _fill(lab: Lab, count: int) -> None:
    """A mapping file with ``count`` sessions, in the seed's format plus our fields."""
    lab.cp("create", "-n", "seed-session")
    data = lab.mapping()
    template = data["aliases"]["seed-session"]
    for index in range(count - 1):
        data["aliases"][f"session-{index:05d}"] = {**template,
                                                    "session_id": str(uuid.uuid4())}
    lab.mapping_file.write_text(json.dumps(data, indent=2))


def big_mapping(sizes: tuple[int, ...] = (10, 5_000, 10_000), rounds: int = 15) -> list[Figure]:
    """``resolve``, ``list --json`` and ``create`` on mapping files of each size."""
    labs = {}
    for size in sizes:
        labs[size] = Lab.make(f"mapping-{size}")
        _fill(labs[size], size)
    counters = dict.fromkeys(sizes, 0)

    def create(size: int) -> None:
        counters[size] += 1
        labs[size].cp("create", "-n", f"new-{counters[size]}")

    actions: dict[str, Any] = {}
    for size in sizes:
        actions[f"resolve {size}"] = lambda s=size: labs[s].cp("resolve", "-n", "seed-session")
        actions[f"list {size}"] = lambda s=size: labs[s].cp("list", "--json")
        actions[f"create {size}"] = lambda s=size: create(s)
    medians = {key: median(v) for key, v in interleaved(actions, rounds).items()}
    small, big = sizes[0], sizes[-1]
    figures = []
    for command in ("resolve", "create"):
        ratio = medians[f"{command} {big}"] / medians[f"{command} {small}"]
        figures.append(Figure(
            key=f"mapping-{command}", what=f"{command} with {big:,} sessions in the mapping",
            value=round(ratio, 2), unit="x", target="< 1.5x", ok=ratio < 1.5,
            baseline=f"the same with {small} sessions",
            context={f"{size}_ms": _ms(medians[f"{command} {size}"]) for size in sizes}))
    # Linear: the time each extra entry adds stays the same from the middle size to the top one.
    per_entry = {size: (medians[f"list {size}"] - medians[f"list {small}"]) / (size - small)
                 for size in sizes[1:]}
    mid = sizes[len(sizes) // 2]
    growth = per_entry[big] / per_entry[mid] if per_entry[mid] > 0 else float("inf")
    figures.append(Figure(
        key="mapping-list", what=f"list --json with {big:,} sessions: cost per entry",
        value=round(growth, 2), unit="x", target="linear (0.5x to 1.5x)",
        ok=0.5 <= growth <= 1.5, baseline=f"cost per entry at {mid:,} sessions",
        context={**{f"{size}_ms": _ms(medians[f"list {size}"]) for size in sizes},
                 "us_per_entry": {size: round(v * 1e6, 2) for size, v in per_entry.items()},
                 "vs_10_sessions": round(medians[f"list {big}"] / medians[f"list {small}"],
                                         2)}))
    return figures


# -- portable sessions ---------------------------------------------------------------------------


def _transcript_pool(megabytes: float, seed: int = 11) -> str:
    """Text to cut transcript lines from: random words, so that it compresses about as well as
    a real transcript (3-4x) and no slice repeats another within gzip's window."""
    chance = random.Random(seed)
    words = ["".join(chance.choices("abcdefghijklmnopqrstuvwxyz", k=chance.randint(2, 10)))
             for _ in range(5000)]
    return " ".join(chance.choices(words, k=int(megabytes * 2**20 / 6)))


def _portable_lab(name: str, sessions: int, kilobytes: int, pool: str) -> tuple[Lab, int]:
    """A lab whose mapping names ``sessions`` sessions, each with a transcript of about
    ``kilobytes`` KB where claude keeps it (JSON lines shaped as claude's). Returns the lab and
    the bytes of all transcripts."""
    from claude_persist import transcripts

    lab = Lab.make(name)
    chance = random.Random(sessions)
    aliases = {}
    total = 0
    for index in range(sessions):
        sid = str(uuid.uuid4())
        path = transcripts.transcript_path(sid, lab.workspace, lab.env)
        path.parent.mkdir(parents=True, exist_ok=True)
        lines, size, turn = [], 0, 0
        while size < kilobytes * 1024:
            start = chance.randrange(len(pool) - 4096)
            role = "user" if turn % 2 == 0 else "assistant"
            line = json.dumps({"type": role, "uuid": str(uuid.uuid4()), "sessionId": sid,
                               "cwd": str(lab.workspace), "message": {
                                   "role": role,
                                   "content": pool[start:start + chance.randint(500, 4000)]}})
            lines.append(line + "\n")
            size += len(line) + 1
            turn += 1
        path.write_text("".join(lines))
        total += size
        aliases[f"s-{index:05d}"] = {"session_id": sid, "created_at": "2026-01-01T00:00:00",
                                     "cwd": str(lab.workspace), "last_model": "opus"}
    _write_mapping(lab, aliases)
    return lab, total


def _write_mapping(lab: Lab, aliases: dict[str, Any]) -> None:
    """The mapping file as our own writes leave it (one entry a line)."""
    from claude_persist import mapping

    lab.mapping_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    lab.mapping_file.write_text(mapping.dump(mapping.MappingDoc(str(lab.workspace), aliases)))
    lab.mapping_file.chmod(0o600)


def _reset_destination(lab: Lab, mapping: str | None) -> None:
    """Back to before the import: no transcripts, the mapping as it was (or none)."""
    import shutil

    shutil.rmtree(lab.root / "claude-config", ignore_errors=True)
    if mapping is None:
        lab.mapping_file.unlink(missing_ok=True)
    else:
        lab.mapping_file.write_text(mapping)


def _remove(*labs: Lab) -> None:
    import shutil

    for lab in labs:
        shutil.rmtree(lab.root, ignore_errors=True)


def bundle_throughput(sessions: int = 1000, kilobytes: int = 1024, rounds: int = 3
                      ) -> list[Figure]:
    """``export --all`` and ``import`` of ``sessions`` sessions of ``kilobytes`` KB
    transcripts, each against ``tar czf`` / ``tar xzf`` of the same files in the same run
    (rounds alternate, medians compared)."""
    from claude_persist import transcripts

    pool = _transcript_pool(8)
    source, total = _portable_lab("export", sessions, kilobytes, pool)
    project = transcripts.project_folder(source.workspace, source.env)
    destination = Lab.make("import")
    ours, theirs = source.root / "ours.tgz", source.root / "theirs.tgz"
    unpacked = destination.root / "tar-x"

    def tar_x() -> None:
        import shutil

        shutil.rmtree(unpacked, ignore_errors=True)
        unpacked.mkdir()
        started = time.perf_counter()
        destination.run(["tar", "xzf", str(theirs), "-C", str(unpacked)])
        times["tar xzf"].append(time.perf_counter() - started)

    def our_import() -> None:
        _reset_destination(destination, None)
        started = time.perf_counter()
        destination.cp("import", str(ours))
        times["import"].append(time.perf_counter() - started)

    times: dict[str, list[float]] = {"tar xzf": [], "import": []}
    exports = interleaved({
        "tar czf": lambda: source.run(["tar", "czf", str(theirs), "-C", str(project.parent),
                                       f"./{project.name}"]),  # it starts with -
        "export": lambda: source.cp("export", "--all", "-o", str(ours)),
    }, rounds, warmup=0)
    for _ in range(rounds):
        tar_x()
        our_import()
    imported = list((destination.root / "claude-config" / "projects").glob("*/*.jsonl"))
    assert len(imported) == sessions, f"{len(imported)} of {sessions} transcripts imported"
    sizes = {"bundle_MB": round(ours.stat().st_size / 1e6, 1),
             "tar_MB": round(theirs.stat().st_size / 1e6, 1)}
    _remove(source, destination)  # a few gigabytes
    mb = total / 1e6
    figures = []
    for key, mine, baseline, measured in (("export", "export", "tar czf", exports),
                                          ("import", "import", "tar xzf", times)):
        ours_s, base_s = median(measured[mine]), median(measured[baseline])
        ratio = base_s / ours_s  # our throughput as a share of tar's
        figures.append(Figure(
            key=f"bundle-{key}",
            what=f"{mine} of {sessions:,} sessions of {kilobytes / 1024:g} MB transcripts",
            value=round(ratio, 2), unit="x tar's throughput", target=">= 0.5x",
            ok=ratio >= 0.5, baseline=f"{baseline} of the same files (median of {rounds})",
            context={f"{mine}_s": round(ours_s, 2), f"{baseline}_s": round(base_s, 2),
                     f"{mine}_MB_per_s": round(mb / ours_s, 1),
                     f"{baseline}_MB_per_s": round(mb / base_s, 1), **sizes}))
    return figures


def import_into_big_mapping(size: int = 10_000, sessions: int = 100, kilobytes: int = 100,
                            rounds: int = 7) -> Figure:
    """``import`` of one bundle into a mapping of ``size`` sessions, against the same import
    into an empty mapping; each round starts both from scratch, alternating."""
    pool = _transcript_pool(4)
    source, _ = _portable_lab("bundle-source", sessions, kilobytes, pool)
    bundle = source.root / "bundle.tgz"
    source.cp("export", "--all", "-o", str(bundle))
    empty, full = Lab.make("import-empty"), Lab.make("import-full")
    _write_mapping(full, {f"other-{index:05d}": {
        "session_id": str(uuid.uuid4()), "created_at": "2026-01-01T00:00:00",
        "cwd": str(full.workspace), "last_model": "opus", "last_reasoning_effort": "high"}
        for index in range(size)})
    full_mapping = full.mapping_file.read_text()

    def run(lab: Lab, mapping: str | None) -> None:
        _reset_destination(lab, mapping)
        started = time.perf_counter()
        lab.cp("import", str(bundle))
        times[id(lab)].append(time.perf_counter() - started)

    times: dict[int, list[float]] = {id(empty): [], id(full): []}
    run(empty, None)  # warm-up
    run(full, full_mapping)
    times = {id(empty): [], id(full): []}
    for _ in range(rounds):
        run(empty, None)
        run(full, full_mapping)
    assert len(json.loads(full.mapping_file.read_text())["aliases"]) == size + sessions
    bundle_mb = round(bundle.stat().st_size / 1e6, 2)
    _remove(source, empty, full)
    small, big = median(times[id(empty)]), median(times[id(full)])
    ratio = big / small
    return Figure(
        key="bundle-import-mapping",
        what=f"import of {sessions} sessions into a mapping of {size:,}",
        value=round(ratio, 2), unit="x", target="<= 1.5x", ok=ratio <= 1.5,
        baseline=f"the same import into an empty mapping (median of {rounds})",
        context={"empty_ms": _ms(small), f"{size}_ms": _ms(big), "bundle_MB": bundle_mb})


# -- concurrency and crashes ---------------------------------------------------------------------

_CREATE_WORKER = textwrap.dedent("""
    import sys
    from claude_persist import Sessions
    sessions = Sessions(sys.argv[1])
    for index in range(int(sys.argv[3])):
        sessions.create(f"w{sys.argv[2]}-{index}", "hi")
""")


def concurrent_creates(processes: int = 32, creates: int = 25) -> Figure:
    """``processes`` processes each creating ``creates`` sessions at the same time."""
    lab = Lab.make("concurrent")
    started = time.perf_counter()
    procs = [subprocess.Popen([PYTHON, "-c", _CREATE_WORKER, str(lab.workspace), str(p),
                               str(creates)], env=lab.env, cwd=lab.workspace,
                              stderr=subprocess.PIPE, text=True)
             for p in range(processes)]
    errors = [p.communicate()[1] for p in procs]
    took = time.perf_counter() - started
    failed = [e for p, e in zip(procs, errors, strict=True) if p.returncode != 0]
    aliases = lab.mapping()["aliases"]
    expected = {f"w{p}-{i}" for p in range(processes) for i in range(creates)}
    missing = expected - set(aliases)
    ids = {entry["session_id"] for entry in aliases.values()}
    total = processes * creates
    return Figure(
        key="concurrent-creates", what=f"{processes} processes x {creates} creates at once",
        value=len(expected & set(aliases)), unit="entries", target=f"{total}, none lost",
        ok=not missing and not failed and len(ids) == len(aliases) == total,
        baseline="none",
        context={"seconds": round(took, 2), "creates_per_s": round(total / took, 1),
                 "missing": len(missing), "failed_processes": len(failed),
                 "first_error": failed[0][-300:] if failed else None})


_WRITER = textwrap.dedent("""
    import sys, uuid
    from claude_persist import Sessions
    sessions = Sessions(sys.argv[1])
    index = 0
    while True:
        name = f"r{sys.argv[2]}-{index}"
        sessions.adopt(name, str(uuid.uuid4()))
        print(name, flush=True)  # printed only once the write is committed
        index += 1
""")


def kill_writers(rounds: int = 200, seed: int = 7) -> Figure:
    """A writer killed with SIGKILL at a random moment, ``rounds`` times; after each, the file
    must parse and hold every entry the writer had reported as written."""
    lab = Lab.make("kill")
    lab.cp("create", "-n", "first")
    chance = random.Random(seed)
    committed: set[str] = {"first"}
    unparsable = lost = 0
    started = time.perf_counter()
    for round_ in range(rounds):
        proc = subprocess.Popen([PYTHON, "-c", _WRITER, str(lab.workspace), str(round_)],
                                stdout=subprocess.PIPE, text=True, env=lab.env,
                                cwd=lab.workspace)
        assert proc.stdout is not None
        # The first write is committed (start-up and the first write's imports are over, and
        # on a busy machine they outlast the random wait): the kill lands in the write loop.
        out = proc.stdout.readline()
        time.sleep(chance.uniform(0, 0.03))
        os.kill(proc.pid, signal.SIGKILL)
        out += proc.stdout.read()
        proc.wait()
        committed.update(line for line in out.split() if line)
        try:
            aliases = json.loads(lab.mapping_file.read_text())["aliases"]
        except ValueError:
            unparsable += 1
            continue
        lost += len(committed - set(aliases))
    took = time.perf_counter() - started
    return Figure(
        key="kill-writers", what=f"kill -9 of a writer at random moments, {rounds} times",
        value=unparsable + lost, unit="failures", target="0 (always parses, none lost)",
        ok=unparsable == 0 and lost == 0, baseline="none",
        context={"rounds": rounds, "committed_entries": len(committed),
                 "unparsable": unparsable, "lost": lost, "seconds": round(took, 1)})


if sys.platform != "linux":  # /proc is read for memory figures
    raise ImportError("the benchmarks read /proc and run on Linux only")
