"""Processes the benchmark starts, and the guarantee that it stops every one of them.

Long-lived servers (simulator, gunicorn) run in their own sessions so a Ctrl-C in the
terminal reaches only the benchmark, which then stops them in order from its `finally`.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


def log(message: str) -> None:
    """Progress for the person watching; flushed so `make bench | tee` shows it live."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def free_port() -> int:
    """A loopback port nobody listens on right now (the OS picks it)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run(
    argv: list[str],
    env: dict[str, str],
    *,
    timeout: float,
    check: bool = True,
    stream_stderr: bool = False,
) -> subprocess.CompletedProcess[str]:
    """A bounded child process (a manage.py command, a helper, wrk); stdout is captured,
    stderr too unless it carries progress the person watching should see."""
    result = subprocess.run(  # noqa: S603 (argv is built by this script, never from input)
        argv,
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=None if stream_stderr else subprocess.PIPE,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv[:4])}… exited {result.returncode}:\n{(result.stderr or '')[-3000:]}"
        )
    return result


@dataclass
class Processes:
    """Every long-lived child, so cleanup can stop them all whatever happened."""

    running: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)

    def start(self, name: str, argv: list[str], env: dict[str, str], log_path: Path):
        with log_path.open("ab") as output:
            process = subprocess.Popen(  # noqa: S603 (argv is built by this script)
                argv,
                env=env,
                cwd=ROOT,
                stdout=output,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.running.append((name, process))
        return process

    def stop(self, process: subprocess.Popen[bytes]) -> None:
        """SIGTERM the child's whole process group (gunicorn's workers too), then SIGKILL."""
        self.running = [(n, p) for n, p in self.running if p is not process]
        if process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)

    def stop_all(self) -> None:
        for _, process in reversed(list(self.running)):
            self.stop(process)


def wait_for_http(host: str, port: int, path: str, *, timeout: float, process=None) -> None:
    """Wait until a server answers any HTTP status on `path` (bounded by `timeout`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server on port {port} exited with {process.returncode}")
        connection = http.client.HTTPConnection(host, port, timeout=2)
        try:
            connection.request("GET", path)
            connection.getresponse().read()
            return
        except OSError:
            time.sleep(0.1)
        finally:
            connection.close()
    raise RuntimeError(f"nothing answered on {host}:{port} within {timeout:.0f} s")


def install_signal_handlers() -> None:
    """SIGTERM and SIGHUP unwind like Ctrl-C, so `finally` blocks clean up."""

    def interrupt(signal_number: int, _frame) -> None:
        raise KeyboardInterrupt(f"signal {signal_number}")

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGHUP, interrupt)


# --- CPU accounting: how much of the machine was ours during a run -------------------

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _proc_stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds incl. reaped children) of a process, or None if gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    ticks = sum(int(value) for value in fields[11:15])  # utime stime cutime cstime
    return int(fields[1]), ticks / CLOCK_TICKS


def _machine_busy_seconds() -> float:
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values[:8]) - idle) / CLOCK_TICKS


def _process_names() -> dict[int, str]:
    names = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                names[int(entry.name)] = (entry / "comm").read_text().strip()
    return names


@dataclass(frozen=True)
class CpuSample:
    at: float
    busy: float
    ours: float
    database: float


def cpu_sample() -> CpuSample:
    """CPU seconds so far: whole machine, this benchmark's process tree, the DB server."""
    me = os.getpid()
    names = _process_names()
    stats = {pid: _proc_stat(pid) for pid in names}
    children: dict[int, list[int]] = {}
    for pid, stat in stats.items():
        if stat is not None:
            children.setdefault(stat[0], []).append(pid)
    ours, stack = 0.0, [me]
    while stack:
        pid = stack.pop()
        stat = stats.get(pid) or _proc_stat(pid)
        if stat is not None:
            ours += stat[1]
        stack.extend(children.get(pid, []))
    database = sum(
        stat[1]
        for pid, stat in stats.items()
        if stat is not None and names.get(pid) in ("mariadbd", "mysqld")
    )
    return CpuSample(time.monotonic(), _machine_busy_seconds(), ours, database)


@dataclass(frozen=True)
class CpuShare:
    """Percent of all cores during a run: ours, the DB server's, everyone else's."""

    ours: float
    database: float
    others: float

    def __str__(self) -> str:
        return f"ours {self.ours:.0f}%, db {self.database:.0f}%, others {self.others:.0f}%"


def cpu_share(before: CpuSample, after: CpuSample) -> CpuShare:
    capacity = max(after.at - before.at, 1e-6) * (os.cpu_count() or 1)
    busy = after.busy - before.busy
    ours = after.ours - before.ours
    database = after.database - before.database
    others = max(busy - ours - database, 0.0)
    return CpuShare(100 * ours / capacity, 100 * database / capacity, 100 * others / capacity)
