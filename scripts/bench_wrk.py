"""Load generation with wrk (Debian's package): a compiled, event-driven client.

Why wrk: one C thread with epoll keeps 64 keep-alive connections busy for a few percent
of one core, so the client neither steals much CPU from the relay on a 2-core machine
nor adds a Python GIL queue of its own to the latencies it reports. Its `done()` hook
hands us the latency histogram's percentiles as JSON (the same numbers as `--latency`).
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from bench_procs import CpuShare, cpu_sample, cpu_share, log, run

# Every script ends with this: percentiles in microseconds, errors, and whether a
# request pool ran out (callbacks must never be sent twice to be counted).
_DONE = r"""
local threads = {}
function setup(thread) table.insert(threads, thread) end
function done(summary, latency, requests)
  local exhausted = 0
  for _, thread in ipairs(threads) do
    if thread:get("exhausted") then exhausted = 1 end
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests":%d,"duration_us":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,' ..
    '"max_us":%d,"status_errors":%d,"connect_errors":%d,"read_errors":%d,' ..
    '"write_errors":%d,"timeouts":%d,"exhausted":%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, e.status, e.connect, e.read, e.write, e.timeout,
    exhausted))
end
"""

SUBMIT_LUA = r"""
-- POST a text2video body. The direct baseline adds a unique external_task_id, as the
-- relay does upstream (Kling refuses a duplicate one), so both bodies are alike.
local prefix = os.getenv("BENCH_PREFIX")
local add_external_id = os.getenv("BENCH_EXTERNAL_ID") == "1"
local counter = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = os.getenv("BENCH_AUTH")
function request()
  counter = counter + 1
  local external = ""
  if add_external_id then external = ',"external_task_id":"' .. prefix .. counter .. '"' end
  return wrk.format(nil, nil, nil,
    '{"model_name":"kling-v1","mode":"std","duration":"5",' ..
    '"prompt":"a cat playing the piano"' .. external .. '}')
end
"""

QUERY_LUA = r"""
-- GET one task after another from a file of ids, round robin.
local ids = {}
for line in io.lines(os.getenv("BENCH_IDS")) do ids[#ids + 1] = line end
local path_prefix = os.getenv("BENCH_PATH_PREFIX")
local i = 0
wrk.headers["Authorization"] = os.getenv("BENCH_AUTH")
function request()
  i = i % #ids + 1
  return wrk.format("GET", path_prefix .. ids[i])
end
"""

CALLBACK_LUA = r"""
-- POST one Kling `succeed` callback per task ("pk token task_id" per line), each task once.
local tasks = {}
for line in io.lines(os.getenv("BENCH_IDS")) do
  local pk, token, task_id = line:match("(%S+) (%S+) (%S+)")
  tasks[#tasks + 1] = {pk, token, task_id}
end
local i = 0
exhausted = false
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
function request()
  i = i + 1
  if i > #tasks then
    exhausted = true
    wrk.thread:stop()
    i = #tasks
  end
  local pk, token, task_id = tasks[i][1], tasks[i][2], tasks[i][3]
  local body = '{"task_id":"' .. task_id .. '","task_status":"succeed","task_status_msg":"",' ..
    '"task_info":{"external_task_id":"' .. pk .. '"},"created_at":1700000000000,' ..
    '"updated_at":1700000060000,"task_result":{"videos":[{"id":"bench-video-' .. pk ..
    '","url":"https://videos.example.invalid/' .. pk .. '.mp4","duration":"5"}]}}'
  return wrk.format(nil, "/kling/internal/callback?token=" .. token, nil, body)
end
"""


@dataclass(frozen=True)
class LoadResult:
    label: str
    connections: int
    requests: int
    seconds: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    errors: int
    timeouts: int
    exhausted: bool
    cpu: CpuShare
    server: ServerTimes | None = None

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


@dataclass(frozen=True)
class ServerTimes:
    """Time inside gunicorn per request (access log %(D)s), for the same run."""

    count: int
    p50_ms: float
    p99_ms: float


def wrk_binary() -> str:
    binary = shutil.which("wrk")
    if binary:
        return binary
    apt = shutil.which("apt-get")
    if apt:  # the same Debian package CI machines can install
        log("wrk is not installed: installing Debian's package 'wrk' with apt-get")
        install = [apt, "install", "-y", "-qq", "wrk"]
        if subprocess.run(install, capture_output=True, check=False).returncode != 0:  # noqa: S603
            subprocess.run([apt, "update", "-qq"], capture_output=True, check=False)  # noqa: S603
            subprocess.run(install, capture_output=True, check=False)  # noqa: S603
        binary = shutil.which("wrk")
    if not binary:
        raise SystemExit("wrk is needed: apt-get install -y wrk")
    return binary


def write_scripts(directory: Path) -> dict[str, Path]:
    scripts = {"submit": SUBMIT_LUA, "query": QUERY_LUA, "callback": CALLBACK_LUA}
    paths = {}
    for name, body in scripts.items():
        paths[name] = directory / f"{name}.lua"
        paths[name].write_text(body + _DONE)
    return paths


def run_wrk(
    label: str,
    *,
    url: str,
    script: Path,
    connections: int,
    seconds: float,
    env: dict[str, str],
    access_log: AccessLog | None = None,
) -> LoadResult:
    """One closed-loop run: `connections` clients, each sending as soon as it is answered.

    --timeout 60s keeps slow answers in the histogram (wrk drops timed-out requests from
    its latency statistics, which would flatter p99).
    """
    duration = max(1, math.ceil(seconds))  # wrk takes whole seconds only
    argv = [wrk_binary(), "-t1", f"-c{connections}", f"-d{duration}s", "--timeout", "60s"]
    argv += ["--latency", "-s", str(script), url]
    offset = access_log.offset() if access_log else 0
    before = cpu_sample()
    completed = run(argv, env, timeout=duration + 90)
    share = cpu_share(before, cpu_sample())
    line = next(
        (ln for ln in completed.stdout.splitlines() if ln.startswith("BENCH_RESULT ")), None
    )
    if line is None:
        raise RuntimeError(f"wrk printed no result for {label}:\n{completed.stdout[-2000:]}")
    data = json.loads(line.removeprefix("BENCH_RESULT "))
    result = LoadResult(
        label=label,
        connections=connections,
        requests=data["requests"],
        seconds=data["duration_us"] / 1e6,
        p50_ms=data["p50_us"] / 1000,
        p90_ms=data["p90_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        max_ms=data["max_us"] / 1000,
        errors=data["status_errors"]
        + data["connect_errors"]
        + data["read_errors"]
        + data["write_errors"],
        timeouts=data["timeouts"],
        exhausted=bool(data["exhausted"]),
        cpu=share,
        server=access_log.times_since(offset) if access_log else None,
    )
    log(
        f"  {label} c={connections}: {result.rate:,.0f}/s p50 {result.p50_ms:.2f} ms "
        f"p99 {result.p99_ms:.2f} ms errors {result.errors} ({share})"
    )
    return result


@dataclass
class AccessLog:
    """gunicorn's access log, written as '%(m)s %(U)s %(s)s %(D)s' (D = µs in the worker)."""

    path: Path

    def offset(self) -> int:
        return self.path.stat().st_size if self.path.exists() else 0

    def times_since(self, offset: int) -> ServerTimes | None:
        with self.path.open("rb") as handle:
            handle.seek(offset)
            lines = handle.read().decode(errors="replace").splitlines()
        micros = sorted(int(parts[3]) for parts in map(str.split, lines) if len(parts) == 4)
        if not micros:
            return None
        return ServerTimes(
            count=len(micros),
            p50_ms=percentile(micros, 50) / 1000,
            p99_ms=percentile(micros, 99) / 1000,
        )


def percentile(sorted_values: list[float], pct: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return float("nan")
    rank = math.ceil(pct / 100 * len(sorted_values))
    return sorted_values[min(max(rank, 1), len(sorted_values)) - 1]
