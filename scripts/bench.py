"""`make bench`: Kling Relay under gunicorn against the Kling simulator; writes
docs/performance.md.

Measures, on a fresh SQLite file and (when DATABASE_URL is mysql://…) on a scratch
MariaDB database that it creates and drops:
  1. relay overhead per request (relay latency − direct-to-simulator latency) for
     submit and for the query of an unfinished task, at 1, 16 and 64 clients;
  2. Kling callbacks per second, and that every task was charged exactly once;
  3. server time of the query of a finished task (in-process, and gunicorn's log);
  4. the relay's lookups at 1 M and 10 M task rows, with their plans.

Only loopback traffic; every loop is bounded in count and time; everything started
is stopped and removed, also on Ctrl-C. `--quick` is a smoke test of the same path.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import bench_report
import jwt
from bench_procs import (
    PYTHON,
    ROOT,
    Processes,
    free_port,
    install_signal_handlers,
    log,
    run,
    wait_for_http,
)
from bench_wrk import AccessLog, LoadResult, run_wrk, write_scripts, wrk_binary

sys.path.insert(0, str(ROOT))
from videos.simulator import DEFAULT_ACCESS_KEY, DEFAULT_SECRET_KEY

BENCH_SECRET_KEY = "klingrelay-bench-only-secret-key-not-for-production"  # noqa: S105
BENCH_USER = "bench"
CHANNEL_NAME = "simulator"
# Slow enough that no simulated task finishes during the run: the query runs need
# tasks that are still unfinished at Kling, and no simulator clock work competes for CPU.
SIMULATOR_SPEED = 0.001
# Callbacks a pool must hold per second of run, so it never runs out (a run is valid
# only if every callback is for a task not called back yet).
CALLBACK_POOL_PER_SECOND = 1500


@dataclass(frozen=True)
class Options:
    quick: bool
    seconds: float
    callback_seconds: float
    concurrency: list[int]
    callback_concurrency: list[int]
    workers: int
    threads: int
    small_rows: int
    large_rows: int
    sqlite_large_rows: int
    budget: float
    inprocess_iterations: int
    profile_iterations: int
    lookup_iterations: int
    output: Path
    sqlite: bool
    mariadb_url: str | None


def parse_options(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts: a smoke test")
    parser.add_argument("--seconds", type=float, help="length of each overhead run (5)")
    parser.add_argument("--callback-seconds", type=float, help="length of a callback run (5)")
    parser.add_argument("--concurrency", default="1,16,64", help="clients for overhead runs")
    parser.add_argument("--callback-concurrency", default="16,64")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers (2)")
    parser.add_argument("--threads", type=int, default=8, help="threads per worker (8)")
    parser.add_argument("--small-rows", type=int, help="first lookup stage (1,000,000)")
    parser.add_argument("--large-rows", type=int, help="second stage, MariaDB (10,000,000)")
    parser.add_argument(
        "--sqlite-large-rows",
        type=int,
        default=0,
        help="second stage on SQLite too (default 0: skipped, it does not fit the budget)",
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=570,
        help="seconds for the whole run; the large lookup stage is shrunk to fit (default 570)",
    )
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "performance.md")
    parser.add_argument("--no-sqlite", action="store_true", help="MariaDB only")
    args = parser.parse_args(argv)

    url = os.environ.get("DATABASE_URL", "")
    quick = args.quick
    return Options(
        quick=quick,
        seconds=args.seconds or (1.0 if quick else 5.0),
        callback_seconds=args.callback_seconds or (1.0 if quick else 5.0),
        concurrency=[int(c) for c in args.concurrency.split(",")],
        callback_concurrency=[int(c) for c in args.callback_concurrency.split(",")],
        workers=args.workers,
        threads=args.threads,
        small_rows=args.small_rows or (20_000 if quick else 1_000_000),
        large_rows=args.large_rows or (100_000 if quick else 10_000_000),
        sqlite_large_rows=args.sqlite_large_rows,
        budget=args.budget,
        inprocess_iterations=200 if quick else 1000,
        profile_iterations=20 if quick else 40,
        lookup_iterations=10 if quick else 40,
        output=args.output,
        sqlite=not args.no_sqlite,
        mariadb_url=url if url.startswith("mysql") else None,
    )


# --- databases ----------------------------------------------------------------------


@dataclass
class SqliteDatabase:
    path: Path
    label: str = "SQLite"

    @property
    def url(self) -> str:
        return f"sqlite:///{self.path}"

    def create(self) -> None:
        self.drop()

    def drop(self) -> None:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)

    def describe(self) -> dict[str, str]:
        import sqlite3

        return {"engine": "SQLite", "version": sqlite3.sqlite_version, "file": "temporary"}


@dataclass
class MariaDatabase:
    """A scratch database on the server DATABASE_URL names; never the URL's own database
    unless that is already a *_bench one, and never `test`."""

    server_url: str
    label: str = "MariaDB"
    name: str = field(init=False)

    def __post_init__(self) -> None:
        wanted = urlsplit(self.server_url).path.lstrip("/")
        self.name = wanted if wanted.endswith("_bench") else "klingrelay_bench"

    @property
    def url(self) -> str:
        parts = urlsplit(self.server_url)
        return parts._replace(path=f"/{self.name}").geturl()

    def _connect(self):
        import MySQLdb

        parts = urlsplit(self.server_url)
        return MySQLdb.connect(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 3306,
            user=parts.username or "root",
            password=parts.password or "",
        )

    def _execute(self, *statements: str) -> list[tuple]:
        connection = self._connect()
        try:
            cursor = connection.cursor()
            rows: list[tuple] = []
            for statement in statements:
                cursor.execute(statement)
                rows = list(cursor.fetchall())
            return rows
        finally:
            connection.close()

    def create(self) -> None:
        self.drop()  # a run killed with SIGKILL may have left it
        self._execute(f"CREATE DATABASE `{self.name}` CHARACTER SET utf8mb4")

    def drop(self) -> None:
        if self.name in ("test", "mysql", "information_schema", "performance_schema", "sys"):
            raise SystemExit(f"refusing to touch database {self.name!r}")
        self._execute(f"DROP DATABASE IF EXISTS `{self.name}`")

    def describe(self) -> dict[str, str]:
        version, pool, flush = self._execute(
            "SELECT VERSION(), @@innodb_buffer_pool_size, @@innodb_flush_log_at_trx_commit"
        )[0]
        return {
            "engine": "MariaDB",
            "version": str(version),
            "innodb_buffer_pool": f"{int(pool) // 2**20} MiB",
            "innodb_flush_log_at_trx_commit": str(flush),
            "database": self.name,
        }

    def available(self) -> str | None:
        """None when the server answers, else why not."""
        try:
            self._execute("SELECT 1")
        except Exception as error:  # any driver or network error means "skip MariaDB"
            return f"{type(error).__name__}: {error}"
        return None


# --- the run's shared context ---------------------------------------------------------


@dataclass
class Context:
    options: Options
    processes: Processes
    workdir: Path
    scripts: dict[str, Path]
    deadline: float
    simulator_url: str = ""
    simulator: Any = None

    def env(self, database_url: str, **extra: str) -> dict[str, str]:
        """Environment of every relay process: production settings, bench database."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("GUNICORN_")}
        env.update(
            DATABASE_URL=database_url,
            SECRET_KEY=BENCH_SECRET_KEY,
            DEBUG="0",
            LOG_LEVEL="WARNING",
            SERVER_ADDRESS="",  # callbacks are posted by wrk, not by the simulator
            DJANGO_SETTINGS_MODULE="klingrelay.settings",
            BENCH_USER=BENCH_USER,
            BENCH_CHANNEL=CHANNEL_NAME,
        )
        env.update(extra)
        return env

    def manage(self, database_url: str, *arguments: str) -> str:
        completed = run([PYTHON, "manage.py", *arguments], self.env(database_url), timeout=300)
        return completed.stdout

    def helper(self, script: str, database_url: str, *arguments: str, **env: str) -> Any:
        """Run scripts/<script> in its own process; return the JSON it prints."""
        completed = run(
            [PYTHON, str(ROOT / "scripts" / script), *arguments],
            self.env(database_url, **env),
            timeout=max(self.deadline - time.time(), 0) + 600,
            stream_stderr=True,
        )
        line = next(ln for ln in completed.stdout.splitlines() if ln.startswith("BENCH_JSON "))
        return json.loads(line.removeprefix("BENCH_JSON "))


def kling_jwt() -> str:
    """The token a Kling client (and the relay) signs with the simulator's demo key."""
    now = int(time.time())
    claims = {"iss": DEFAULT_ACCESS_KEY, "exp": now + 1800, "nbf": now - 5}
    return jwt.encode(claims, DEFAULT_SECRET_KEY, algorithm="HS256", headers={"typ": "JWT"})


# --- processes ------------------------------------------------------------------------


def start_simulator(ctx: Context) -> None:
    """A fresh simulator: each database numbers its tasks from 1, and Kling (like the
    simulator) refuses an external_task_id it has seen, so databases must not share one."""
    if ctx.simulator is not None:
        ctx.processes.stop(ctx.simulator)
    port = free_port()
    argv = [PYTHON, "manage.py", "klingsim", "--port", str(port), "--speed", str(SIMULATOR_SPEED)]
    log_path = ctx.workdir / "simulator.log"
    process = ctx.processes.start("simulator", argv, ctx.env(""), log_path)
    wait_for_http("127.0.0.1", port, "/_sim/health", timeout=60, process=process)
    ctx.simulator = process
    ctx.simulator_url = f"http://127.0.0.1:{port}"
    log(f"simulator on {ctx.simulator_url} (speed {SIMULATOR_SPEED}: tasks stay unfinished)")


def gunicorn_has_control_socket() -> bool:
    """gunicorn ≥ 24 opens ~/.gunicorn/gunicorn.ctl unless told not to; other engineers'
    gunicorns share that path, so the benchmark's must not take it."""
    helptext = run([PYTHON, "-m", "gunicorn", "--help"], dict(os.environ), timeout=60).stdout
    return "--no-control-socket" in helptext


@dataclass
class Relay:
    url: str
    process: Any
    access_log: AccessLog


def start_relay(ctx: Context, database_url: str) -> Relay:
    """gunicorn with gunicorn.conf.py as production runs it; only sizing is chosen here."""
    port = free_port()
    access_log = AccessLog(ctx.workdir / f"access-{port}.log")
    argv = [PYTHON, "-m", "gunicorn", "-c", "gunicorn.conf.py"]
    if gunicorn_has_control_socket():
        argv.append("--no-control-socket")
    argv += ["--access-logfile", str(access_log.path)]
    argv += ["--access-logformat", "%(m)s %(U)s %(s)s %(D)s", "klingrelay.wsgi:application"]
    env = ctx.env(
        database_url,
        GUNICORN_BIND=f"127.0.0.1:{port}",
        GUNICORN_WORKERS=str(ctx.options.workers),
        GUNICORN_THREADS=str(ctx.options.threads),
        # A worker recycled mid-run would put one ~1 s boot into a 5 s run's p99; that
        # is a leak guard's cost, not per-request overhead.
        GUNICORN_MAX_REQUESTS="0",
    )
    process = ctx.processes.start("gunicorn", argv, env, ctx.workdir / f"gunicorn-{port}.log")
    wait_for_http("127.0.0.1", port, "/kling/v1/videos/text2video", timeout=60, process=process)
    log(f"relay (gunicorn {ctx.options.workers}×{ctx.options.threads} gthread) on port {port}")
    return Relay(f"http://127.0.0.1:{port}", process, access_log)


def provision(ctx: Context, database_url: str) -> str:
    """Migrate and seed with the project's own commands; returns the consumer's key."""
    ctx.manage(database_url, "migrate", "--noinput")
    key = f"{DEFAULT_ACCESS_KEY}|{DEFAULT_SECRET_KEY}"
    ctx.manage(
        database_url,
        "add_channel",
        "--name",
        CHANNEL_NAME,
        "--key",
        key,
        "--base-url",
        ctx.simulator_url,
    )
    ctx.manage(database_url, "add_consumer", BENCH_USER, "--quota", str(10**12))
    raw_key = ctx.manage(database_url, "issue_key", BENCH_USER).strip().splitlines()[-1]
    ctx.manage(
        database_url, "set_price", "kling-v1", "--mode", "std", "--duration", "5", "--quota", "5"
    )
    return raw_key


# --- measurements ---------------------------------------------------------------------


def measure_direct(ctx: Context, ids_file: Path, operation: str) -> dict[int, LoadResult]:
    """The same requests straight to the simulator with a Kling JWT: the baseline."""
    env = dict(os.environ, BENCH_AUTH=f"Bearer {kling_jwt()}", BENCH_EXTERNAL_ID="1")
    env.update(BENCH_IDS=str(ids_file), BENCH_PATH_PREFIX="/v1/videos/text2video/")
    results = {}
    for clients in ctx.options.concurrency:
        env["BENCH_PREFIX"] = f"direct-{operation}-{clients}-{time.time_ns()}-"
        results[clients] = run_wrk(
            f"direct {operation}",
            url=f"{ctx.simulator_url}/v1/videos/text2video",
            script=ctx.scripts[operation],
            connections=clients,
            seconds=ctx.options.seconds,
            env=env,
        )
    return results


def measure_relay(
    ctx: Context, relay: Relay, raw_key: str, ids_file: Path, operation: str
) -> dict[int, LoadResult]:
    env = dict(os.environ, BENCH_AUTH=f"Bearer {raw_key}", BENCH_IDS=str(ids_file))
    env["BENCH_PATH_PREFIX"] = "/kling/v1/videos/text2video/"
    results = {}
    for clients in ctx.options.concurrency:
        results[clients] = run_wrk(
            f"relay {operation}",
            url=f"{relay.url}/kling/v1/videos/text2video",
            script=ctx.scripts[operation],
            connections=clients,
            seconds=ctx.options.seconds,
            env=env,
            access_log=relay.access_log,
        )
    return results


def warm_up(ctx: Context, relay: Relay, raw_key: str) -> None:
    """Open DB connections, fill Django's caches and the relay's Kling token cache."""
    env = dict(os.environ, BENCH_AUTH=f"Bearer {raw_key}")
    run_wrk(
        "warm-up submit",
        url=f"{relay.url}/kling/v1/videos/text2video",
        script=ctx.scripts["submit"],
        connections=max(ctx.options.concurrency),
        seconds=1,
        env=env,
    )


def measure_callbacks(ctx: Context, relay: Relay, database_url: str) -> dict[str, Any]:
    """Distinct tasks per run, each called back once; then duplicates, then the ledger."""
    runs, markers = [], []
    pool_size = int(CALLBACK_POOL_PER_SECOND * ctx.options.callback_seconds)
    for clients in ctx.options.callback_concurrency:
        pool = ctx.workdir / f"callbacks-{clients}.txt"
        seeded = ctx.helper(
            "bench_django.py",
            database_url,
            "seed-callbacks",
            "--count",
            str(pool_size),
            "--out",
            str(pool),
        )
        markers.append(seeded["marker"])
        env = dict(os.environ, BENCH_IDS=str(pool))
        runs.append(
            run_wrk(
                "callbacks",
                url=f"{relay.url}/kling/internal/callback",
                script=ctx.scripts["callback"],
                connections=clients,
                seconds=ctx.options.callback_seconds,
                env=env,
                access_log=relay.access_log,
            )
        )
    duplicates = _send_duplicate_callbacks(ctx, relay)
    checks = [
        ctx.helper("bench_django.py", database_url, "verify-callbacks", "--marker", marker)
        for marker in markers
    ]
    return {"runs": runs, "duplicates": duplicates, "checks": checks}


def _send_duplicate_callbacks(ctx: Context, relay: Relay) -> LoadResult:
    """Each of the first 300 tasks of every pool twice more, back to back on 16
    connections, so identical callbacks race: none may charge again."""
    lines: list[str] = []
    for pool in sorted(ctx.workdir.glob("callbacks-*.txt")):
        for line in pool.read_text().splitlines()[:300]:
            lines += [line, line]
    duplicates = ctx.workdir / "callbacks-duplicates.list"
    duplicates.write_text("\n".join(lines) + "\n")
    return run_wrk(
        "duplicate callbacks",
        url=f"{relay.url}/kling/internal/callback",
        script=ctx.scripts["callback"],
        connections=16,
        seconds=max(2.0, len(lines) / 500),
        env=dict(os.environ, BENCH_IDS=str(duplicates)),
        access_log=relay.access_log,
    )


def measure_finished_over_http(
    ctx: Context, relay: Relay, raw_key: str, database_url: str
) -> LoadResult:
    """GET /kling/v1/videos/<task_id> of succeeded tasks, one client: gunicorn's log
    gives the time each request spent inside the relay."""
    ids = ctx.workdir / "finished-ids.txt"
    ctx.helper(
        "bench_django.py", database_url, "task-ids", "--finished", "--limit", "1000",
        "--out", str(ids),
    )  # fmt: skip
    env = dict(os.environ, BENCH_AUTH=f"Bearer {raw_key}", BENCH_IDS=str(ids))
    env["BENCH_PATH_PREFIX"] = "/kling/v1/videos/"
    return run_wrk(
        "finished query",
        url=f"{relay.url}/kling/v1/videos",
        script=ctx.scripts["query"],
        connections=1,
        seconds=ctx.options.seconds,
        env=env,
        access_log=relay.access_log,
    )


def measure_lookups(ctx: Context, database_url: str, large_rows: int) -> list[dict[str, Any]]:
    """The small stage, then the large one if the time budget allows it (shrunk if not)."""
    t0 = int(time.time()) - max(ctx.options.large_rows, large_rows) * 864 // 100 - 3600
    reserve = 50 if not ctx.options.quick else 10  # timing at the large stage, cleanup, report

    def stage(rows: int) -> dict[str, Any]:
        log(f"lookups: growing the task table to {rows:,} rows")
        return ctx.helper(
            "bench_lookups.py",
            database_url,
            "stage",
            "--rows",
            str(rows),
            "--t0",
            str(t0),
            "--deadline",
            str(ctx.deadline - reserve),
            "--explain",
            "--iterations",
            str(ctx.options.lookup_iterations),
        )

    stages = [stage(ctx.options.small_rows)]
    if not large_rows:
        return stages
    rate = stages[0]["rows_per_second"] or 1.0
    room = ctx.deadline - reserve - time.time()
    target = large_rows
    if (large_rows - stages[0]["rows"]) / rate > room:
        target = int(stages[0]["rows"] + rate * room * 0.9) // 100_000 * 100_000
        log(
            f"lookups: {large_rows:,} rows would take {large_rows / rate:.0f} s at "
            f"{rate:,.0f} rows/s; growing to {target:,} to stay in the budget"
        )
    if target < 2 * stages[0]["rows"]:
        stages[0]["large_skipped"] = (
            f"{large_rows:,} rows did not fit the time budget (seeding at {rate:,.0f} rows/s)"
        )
        return stages
    grown = stage(target)
    grown["requested_rows"] = large_rows
    stages.append(grown)
    return stages


@dataclass
class DatabaseResult:
    label: str
    description: dict[str, str]
    submit: dict[int, LoadResult] = field(default_factory=dict)
    query: dict[int, LoadResult] = field(default_factory=dict)
    callbacks: dict[str, Any] = field(default_factory=dict)
    finished_http: LoadResult | None = None
    inprocess: dict[str, Any] = field(default_factory=dict)
    lookups: list[dict[str, Any]] = field(default_factory=list)
    phase_seconds: dict[str, float] = field(default_factory=dict)


def bench_database(
    ctx: Context, database, large_rows: int, direct_query: dict[int, LoadResult]
) -> DatabaseResult:
    """Every measurement on one database; fills `direct_query` the first time (the
    baseline needs task ids the simulator knows, and the relay's own are those)."""
    log(f"=== {database.label} ===")
    timer = time.monotonic()
    start_simulator(ctx)
    database.create()
    raw_key = provision(ctx, database.url)
    result = DatabaseResult(database.label, database.describe())
    relay = start_relay(ctx, database.url)
    try:
        warm_up(ctx, relay, raw_key)
        result.submit = measure_relay(ctx, relay, raw_key, Path("/dev/null"), "submit")
        ids = ctx.workdir / f"unfinished-{database.label}.txt"
        ctx.helper("bench_django.py", database.url, "task-ids", "--out", str(ids))
        if not direct_query:
            log("direct-to-simulator baseline for queries (the relay's task ids)")
            direct_query.update(measure_direct(ctx, ids, "query"))
        result.query = measure_relay(ctx, relay, raw_key, ids, "query")
        result.phase_seconds["overhead"] = time.monotonic() - timer
        result.callbacks = measure_callbacks(ctx, relay, database.url)
        result.finished_http = measure_finished_over_http(ctx, relay, raw_key, database.url)
    finally:
        ctx.processes.stop(relay.process)
    log("in-process timing and profiles")
    result.inprocess = ctx.helper(
        "bench_django.py",
        database.url,
        "inprocess",
        "--iterations",
        str(ctx.options.inprocess_iterations),
        "--profile-iterations",
        str(ctx.options.profile_iterations),
        "--unfinished-ids",
        str(ids),
        BENCH_KEY=raw_key,
    )
    result.phase_seconds["http_and_inprocess"] = time.monotonic() - timer
    result.lookups = measure_lookups(ctx, database.url, large_rows)
    result.phase_seconds["total"] = time.monotonic() - timer
    return result


def main(argv: list[str] | None = None) -> int:
    options = parse_options(argv)
    install_signal_handlers()
    started = time.time()
    workdir = Path(tempfile.mkdtemp(prefix="klingrelay-bench-"))
    processes = Processes()
    databases: list[Any] = []
    report = bench_report.Report(options=options, started=started)
    try:
        wrk_binary()
        ctx = Context(options, processes, workdir, write_scripts(workdir), started + options.budget)
        if options.sqlite:
            databases.append(SqliteDatabase(workdir / "bench.sqlite3"))
        if options.mariadb_url:
            mariadb = MariaDatabase(options.mariadb_url)
            problem = mariadb.available()
            if problem is None:
                databases.append(mariadb)
            else:
                report.mariadb_skipped = f"DATABASE_URL's server did not answer ({problem})"
                log(f"MariaDB skipped: {problem}")
        else:
            report.mariadb_skipped = "DATABASE_URL does not point at MariaDB/MySQL"
        start_simulator(ctx)
        log("direct-to-simulator baseline for submits")
        report.direct_submit = measure_direct(ctx, Path("/dev/null"), "submit")
        for database in databases:
            sqlite = isinstance(database, SqliteDatabase)
            large = options.sqlite_large_rows if sqlite else options.large_rows
            report.databases.append(bench_database(ctx, database, large, report.direct_query))
            database.drop()  # free the disk before the next database grows
    except KeyboardInterrupt:
        log("interrupted: cleaning up")
        return 130
    finally:
        processes.stop_all()
        for database in databases:
            try:
                database.drop()
            except Exception as error:  # cleanup goes on with the rest
                log(f"could not drop {database.label} bench database: {error}")
        shutil.rmtree(workdir, ignore_errors=True)
    report.finished = time.time()
    options.output.parent.mkdir(parents=True, exist_ok=True)
    options.output.write_text(bench_report.render(report))
    log(f"wrote {options.output} in {report.finished - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
