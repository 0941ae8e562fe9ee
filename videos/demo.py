"""The local demo: seed a database, run the relay against the Kling simulator, drive a task.

`python manage.py rundemo` uses this module; so do the tests. Three parts:

- `seed_demo()` creates, once, what a first run needs (an admin, a channel pointing at the
  simulator, prices, a consumer with quota and an API key) and remembers the secrets that
  are shown only once in a private state file, so every run can print them again.
- `DemoStack` runs the simulator in this process and the relay (gunicorn) and the task
  worker as subprocesses, and stops them again.
- `drive()` sends one text2video task through the running relay over HTTP and checks every
  step: quota held, status moving to `succeed`, the video downloadable, exactly one charge.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import requests
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.staticfiles import finders
from django.contrib.staticfiles.storage import ManifestFilesMixin, staticfiles_storage
from django.core.management import call_command
from django.db import DEFAULT_DB_ALIAS, connections, transaction
from django.db.migrations.executor import MigrationExecutor

from billing.management.commands._consumers import create_account
from billing.models import Account, ApiKey, LedgerEntry, Price
from billing.services import authenticate_api_key, top_up
from channels_app.models import Channel

from .models import CallbackEvent, VideoTask
from .simulator import DEFAULT_ACCESS_KEY, DEFAULT_SECRET_KEY, KlingSimulator

ADMIN_USERNAME = "admin"
DEMO_CONSUMER = "demo"
DEMO_QUOTA = 10_000
DEMO_KEY_NAME = "demo"
CHANNEL_NAME = "Kling simulator"
STATE_FILE = "demo.json"

# Models the simulator serves, and the durations a task of each may ask for.
STANDARD_DURATIONS = ("5", "10")
OMNI_DURATIONS = tuple(str(seconds) for seconds in range(3, 11))
SIMULATOR_MODELS: dict[str, tuple[str, ...]] = {
    "kling-v1": STANDARD_DURATIONS,
    "kling-v1-6": STANDARD_DURATIONS,
    "kling-v2-master": STANDARD_DURATIONS,
    "kling-v2-1-master": STANDARD_DURATIONS,
    "kling-v2-5-turbo": STANDARD_DURATIONS,
    "kling-video-o1": OMNI_DURATIONS,
}
# Quota units per second of video: pro costs 3.5 times std, as Kling's own units do.
PRICE_PER_SECOND = {"std": 20, "pro": 70}
# A video-extend adds this many seconds to its parent; the relay prices it as 5 s.
EXTEND_SECONDS = 5

DEMO_PROMPT = "a corgi surfing a wave at sunset, cinematic"
DRIVE_TIMEOUT = 60.0
STARTUP_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0

Write = Callable[[str], None]


class DemoError(Exception):
    """The demo could not do what it set out to: the message says what and why."""


def demo_price(seconds: int, mode: str) -> int:
    return seconds * PRICE_PER_SECOND[mode]


# --- seeding ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoSeed:
    """What a run prints. `admin_password` is None when it is not known any more."""

    admin_username: str
    admin_password: str | None
    account: Account
    api_key: ApiKey
    raw_key: str
    channel: Channel


def ensure_migrated(database: str = DEFAULT_DB_ALIAS) -> None:
    executor = MigrationExecutor(connections[database])
    if executor.migration_plan(executor.loader.graph.leaf_nodes()):
        raise DemoError(
            "the database is not migrated: run `python manage.py migrate` first "
            "(`make run` and `make demo` do)"
        )


def seed_demo(*, simulator_url: str, state_dir: Path) -> DemoSeed:
    """Create what the demo needs, once; later runs reuse it and change nothing.

    Secrets shown only once (the admin password, the API key) are kept in
    `state_dir/demo.json` (mode 0600), one entry per database.
    """
    state = _read_state(state_dir)
    entry = dict(state.get(_database_label(), {}))
    with transaction.atomic():
        admin_password = _seed_admin(entry)
        channel = _seed_channel(simulator_url)
        seed_prices()
        account = _seed_consumer()
        api_key, raw_key = _seed_api_key(account, entry)
    entry["api_key"] = raw_key
    if admin_password is not None:
        entry["admin_password"] = admin_password
    state[_database_label()] = entry
    _write_state(state_dir, state)
    account.refresh_from_db()
    return DemoSeed(ADMIN_USERNAME, admin_password, account, api_key, raw_key, channel)


def seed_prices() -> int:
    """The simulator's models at demo prices; prices an admin already set are kept."""
    created = 0
    for model_name, durations in SIMULATOR_MODELS.items():
        for mode in PRICE_PER_SECOND:
            for duration in durations:
                _, made = Price.objects.get_or_create(
                    model_name=model_name,
                    mode=mode,
                    duration=duration,
                    action="",
                    sound="",
                    defaults={"quota": demo_price(int(duration), mode)},
                )
                created += made
            _, made = Price.objects.get_or_create(
                model_name=model_name,
                mode=mode,
                duration=str(EXTEND_SECONDS),
                action="video-extend",
                sound="",
                defaults={"quota": demo_price(EXTEND_SECONDS, mode)},
            )
            created += made
    return created


def _seed_admin(entry: dict[str, str]) -> str | None:
    user_model = get_user_model()
    admin = user_model.objects.filter(username=ADMIN_USERNAME).first()
    if admin is None:
        password = secrets.token_urlsafe(12)
        user_model.objects.create_superuser(ADMIN_USERNAME, email="", password=password)
        return password
    known = entry.get("admin_password")
    # An admin made by someone else (or a lost state file): its password is not ours to show.
    return known if known and admin.check_password(known) else None


def _seed_channel(simulator_url: str) -> Channel:
    key = f"{DEFAULT_ACCESS_KEY}|{DEFAULT_SECRET_KEY}"
    channel = Channel.objects.filter(name=CHANNEL_NAME).first()
    if channel is None:
        return Channel.objects.create(name=CHANNEL_NAME, key=key, base_url=simulator_url)
    changed = channel.base_url != simulator_url.rstrip("/") or channel.key != key
    channel.base_url, channel.key = simulator_url, key
    if channel.status == Channel.Status.AUTO_DISABLED:
        # Disabled against an earlier simulator run; this run starts a fresh simulator.
        channel.status, channel.disabled_reason, channel.disabled_at = (
            Channel.Status.ENABLED,
            "",
            None,
        )
        changed = True
    if changed:
        channel.save()
    return channel


def _seed_consumer() -> Account:
    account, created = create_account(DEMO_CONSUMER)
    if created:
        top_up(account=account, amount=DEMO_QUOTA, note="demo quota")
    return account


def _seed_api_key(account: Account, entry: dict[str, str]) -> tuple[ApiKey, str]:
    known = entry.get("api_key") or ""
    api_key = authenticate_api_key(known) if known else None
    if api_key is not None and api_key.account_id == account.pk:
        return api_key, known
    return ApiKey.issue(account, name=DEMO_KEY_NAME)


def _database_label() -> str:
    connection = connections[DEFAULT_DB_ALIAS]
    db = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:{db['NAME']}"
    return f"{connection.vendor}://{db.get('HOST') or ''}:{db.get('PORT') or ''}/{db['NAME']}"


def _read_state(state_dir: Path) -> dict[str, dict[str, str]]:
    path = state_dir / STATE_FILE
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except ValueError as error:
        raise DemoError(f"{path} is not valid JSON ({error}); move it away and rerun") from None
    return state if isinstance(state, dict) else {}


def _write_state(state_dir: Path, state: dict[str, Any]) -> None:
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = state_dir / STATE_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    # O_CREAT's mode only applies to a new file; an older one may be more open.
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as file:
        json.dump(state, file, indent=2, sort_keys=True)
        file.write("\n")


# --- the processes -------------------------------------------------------------------------


def relay_url_for(port: int) -> str:
    return f"http://127.0.0.1:{port}"


def _local_session() -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # everything the demo calls is on 127.0.0.1: never a proxy
    return session


def check_port_free(port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as error:
            raise DemoError(f"port {port} on 127.0.0.1 is not free: {error.strerror}") from None


class DemoStack:
    """The simulator (in this process); gunicorn, the task worker and the reconciler
    (subprocesses)."""

    def __init__(
        self,
        *,
        port: int,
        sim_port: int,
        speed: float,
        write: Write,
        state_dir: Path,
        logs_to_files: bool = False,
    ) -> None:
        self.port = port
        self.sim_port = sim_port
        self.speed = speed
        self.write = write
        self.state_dir = state_dir
        # Otherwise the subprocesses share this terminal, so their logs scroll by live.
        self.log_dir = state_dir / "logs" if logs_to_files else None
        self.relay_url = relay_url_for(port)
        self.simulator: KlingSimulator | None = None
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._logs: list[IO[bytes]] = []

    def start(self) -> None:
        check_port_free(self.port)
        _collect_static_if_needed(self.write)
        try:
            self.simulator = KlingSimulator(port=self.sim_port, speed=self.speed).start()
        except OSError as error:
            raise DemoError(
                f"the simulator cannot listen on 127.0.0.1:{self.sim_port}: {error.strerror}"
            ) from None
        self.write(f"Kling simulator: {self.simulator.url} (speed {self.simulator.speed:g})")
        python = sys.executable
        self._spawn(
            "gunicorn",
            [
                python,
                "-m",
                "gunicorn",
                "klingrelay.wsgi",
                "-c",
                "gunicorn.conf.py",
                "--bind",
                f"127.0.0.1:{self.port}",
                "--workers",
                "2",
                "--graceful-timeout",
                "5",
                # gunicorn's shared default socket would be taken from any other gunicorn
                # of this user (and removed when the demo stops).
                "--no-control-socket",
            ],
            # Both workers count into these files, so /metrics shows the relay's totals.
            PROMETHEUS_MULTIPROC_DIR=str(self.state_dir / "prometheus"),
        )
        self._spawn("worker", [python, "manage.py", "db_worker", "--no-reload"])
        # Finishes tasks whose callback never came; quicker than production's default so
        # the demo shows it within seconds.
        self._spawn(
            "reconciler",
            [python, "manage.py", "reconcile", "--loop", "--interval", "5"],
            RECONCILE_AFTER="10",
        )
        self.wait_until_ready()

    def _spawn(self, name: str, command: list[str], **defaults: str) -> None:
        env = defaults | os.environ
        env.pop("DEBUG", None)
        env["SERVER_ADDRESS"] = self.relay_url  # Kling's callbacks come back here
        env["PYTHONUNBUFFERED"] = "1"
        output: IO[bytes] | None = None
        if self.log_dir is not None:
            self.log_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            output = (self.log_dir / f"{name}.log").open("wb")
            self._logs.append(output)
        self.processes[name] = subprocess.Popen(  # noqa: S603 - our own interpreter, fixed args
            command,
            cwd=settings.BASE_DIR,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT if output else None,
        )

    def wait_until_ready(self, timeout: float = STARTUP_TIMEOUT) -> None:
        """Until the relay answers an unauthenticated query the way Kling would (401 JSON)."""
        deadline = time.monotonic() + timeout
        session = _local_session()
        while True:
            self.check_alive()
            try:
                response = session.get(f"{self.relay_url}/kling/v1/videos/1", timeout=2)
                if response.status_code == 401 and "code" in response.json():
                    break
            except (requests.RequestException, ValueError):
                pass
            if time.monotonic() > deadline:
                raise DemoError(f"the relay did not answer on {self.relay_url} in {timeout:g} s")
            time.sleep(0.2)
        login = session.get(f"{self.relay_url}/admin/login/", timeout=10)
        if login.status_code != 200:
            raise DemoError(f"the admin login page answered HTTP {login.status_code}, not 200")

    def check_alive(self) -> None:
        for name, process in self.processes.items():
            code = process.poll()
            if code is not None:
                raise DemoError(
                    f"{name} exited unexpectedly with code {code}{self._log_hint(name)}"
                )

    def _log_hint(self, name: str) -> str:
        if self.log_dir is None:
            return ""
        path = self.log_dir / f"{name}.log"
        try:
            tail = path.read_text(errors="replace").splitlines()[-15:]
        except OSError:
            return ""
        return f"; the end of {path}:\n    " + "\n    ".join(tail)

    def stop(self) -> bool:
        """Stop everything started, newest first; False when nothing was running."""
        was_running = bool(self.processes) or self.simulator is not None
        for name in reversed(list(self.processes)):
            process = self.processes.pop(name)
            process.terminate()  # a no-op once the process has exited
            try:
                process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.write(f"{name} did not stop in {STOP_TIMEOUT:g} s: killing it")
                process.kill()
                process.wait()
        for log in self._logs:
            log.close()
        self._logs.clear()
        if self.simulator is not None:
            self.simulator.stop()
            self.simulator = None
        return was_running


def _collect_static_if_needed(write: Write) -> None:
    # A manifest storage (WhiteNoise's) fails every admin page until collectstatic ran, and
    # any page using a static file added since then.
    if not isinstance(staticfiles_storage, ManifestFilesMixin):
        return
    manifest = Path(settings.STATIC_ROOT) / staticfiles_storage.manifest_name
    if manifest.exists() and manifest.stat().st_mtime >= _newest_static_source():
        return
    write("Collecting static files (once, or after they change)…")
    call_command("collectstatic", interactive=False, verbosity=0)


def _newest_static_source() -> float:
    newest = 0.0
    for finder in finders.get_finders():
        for path, storage in finder.list([]):
            newest = max(newest, os.stat(storage.path(path)).st_mtime)
    return newest


# --- printing --------------------------------------------------------------------------


def describe(seed: DemoSeed, relay_url: str) -> list[str]:
    password = seed.admin_password or (
        "(not known to the demo: set one with `python manage.py changepassword admin`)"
    )
    body = json.dumps(
        {"prompt": DEMO_PROMPT, "model_name": "kling-v1", "mode": "std", "duration": "5"}
    )
    return [
        f"Admin:            {relay_url}/admin/",
        f"  login:          {seed.admin_username}",
        f"  password:       {password}",
        f"Demo consumer:    {seed.account.user.get_username()} "
        f"(quota {seed.account.quota}, available {seed.account.available})",
        f"  API key:        {seed.raw_key}",
        f"  access key:     {seed.api_key.access_key}",
        f"  secret key:     {seed.api_key.secret_key}",
        f"Kling API:        {relay_url}/kling (point a Kling SDK here)",
        "Try it:",
        f"  curl -s {relay_url}/kling/v1/videos/text2video \\",
        f"    -H 'Authorization: Bearer {seed.raw_key}' \\",
        "    -H 'Content-Type: application/json' \\",
        f"    -d '{body}'",
    ]


# --- the scripted drive ------------------------------------------------------------------


@dataclass(frozen=True)
class DriveResult:
    task_id: str
    statuses: list[str]
    video_url: str
    video_bytes: int
    quota_before: int
    quota_after: int
    charged: int


def drive(
    *,
    relay_url: str,
    raw_key: str,
    account: Account,
    write: Write,
    timeout: float = DRIVE_TIMEOUT,
    prompt: str = DEMO_PROMPT,
) -> DriveResult:
    """One text2video task through the relay, every step printed and checked.

    Raises DemoError saying which step went wrong.
    """
    deadline = time.monotonic() + timeout
    session = _local_session()
    session.headers["Authorization"] = f"Bearer {raw_key}"
    account.refresh_from_db()
    quota_before = account.quota
    write(f"[1/6] quota before: {account.quota} (available {account.available})")

    body = {"prompt": prompt, "model_name": "kling-v1", "mode": "std", "duration": "5"}
    price = Price.objects.filter(model_name="kling-v1", mode="std", duration="5", action="")
    cost = price.values_list("quota", flat=True).first()
    if cost is not None and account.available < cost:
        raise DemoError(
            f"the demo consumer has {account.available} quota available and the task costs "
            f"{cost}: top it up with `python manage.py topup {DEMO_CONSUMER} {DEMO_QUOTA}`"
        )
    submit_path = "/kling/v1/videos/text2video"
    write(f"[2/6] POST {submit_path} {json.dumps(body)}")
    answer = _call(session, "POST", relay_url + submit_path, deadline, json=body)
    data = answer.get("data") or {}
    task_id = str(data.get("task_id") or "")
    if not task_id:
        raise DemoError(f"the relay's answer has no task_id: {answer}")
    task = VideoTask.objects.filter(owner=account, task_id=task_id).first()
    if task is None:
        raise DemoError(f"task {task_id} is not in the relay's database")
    write(
        f"      task {task_id} {data.get('task_status')}; "
        f"{task.reserved_quota} quota held until it finishes"
    )

    query_path = f"/kling/v1/videos/text2video/{task_id}"
    write(f"[3/6] polling GET {query_path} until the task finishes")
    started = time.monotonic()
    statuses: list[str] = []
    while True:
        data = _call(session, "GET", relay_url + query_path, deadline).get("data") or {}
        status = str(data.get("task_status"))
        if not statuses or statuses[-1] != status:
            statuses.append(status)
            write(f"      {time.monotonic() - started:5.1f} s  {status}")
        if status in ("succeed", "failed"):
            break
        if time.monotonic() > deadline:
            raise DemoError(f"task {task_id} did not finish in {timeout:g} s (last: {status})")
        time.sleep(0.3)
    if status != "succeed":
        raise DemoError(f"task {task_id} failed: {data.get('task_status_msg') or 'no reason'}")
    bodies = CallbackEvent.objects.filter(task__task_id=task_id).order_by("id")
    callbacks = [_status_in(body) for body in bodies.values_list("body", flat=True)]
    write(f"      Kling's callbacks the relay received for it: {', '.join(callbacks) or 'none'}")

    videos = (data.get("task_result") or {}).get("videos") or []
    video_url = str(videos[0].get("url") or "") if videos else ""
    if not video_url:
        raise DemoError(f"task {task_id} succeeded without a video URL: {data}")
    write(f"[4/6] video: {video_url}")
    video = _download(video_url, deadline)
    write(f"[5/6] downloaded {len(video)} bytes: an MP4 (ftyp '{video[8:12].decode()}')")

    account.refresh_from_db()
    task.refresh_from_db()
    charged = quota_before - account.quota
    charges = LedgerEntry.objects.filter(charged_task_id=task.pk, kind=LedgerEntry.Kind.CHARGE)
    if charges.count() != 1 or charged != task.reserved_quota or task.charged_quota != charged:
        raise DemoError(
            f"billing is off: quota went {quota_before} → {account.quota}, the task held "
            f"{task.reserved_quota} and has {charges.count()} charge(s)"
        )
    write(
        f"[6/6] quota after: {account.quota} (available {account.available}): "
        f"charged {charged} once (ledger entry #{charges.get().pk})"
    )
    return DriveResult(
        task_id, statuses, video_url, len(video), quota_before, account.quota, charged
    )


def _call(
    session: requests.Session, method: str, url: str, deadline: float, **kwargs: Any
) -> dict[str, Any]:
    try:
        response = session.request(method, url, timeout=_remaining(deadline), **kwargs)
    except requests.RequestException as error:
        raise DemoError(f"{method} {url} failed: {error}") from None
    try:
        answer = response.json()
    except ValueError:
        answer = None
    if response.status_code != 200 or not isinstance(answer, dict) or answer.get("code") != 0:
        raise DemoError(
            f"{method} {url} answered HTTP {response.status_code}: {response.text[:300]}"
        )
    return answer


def _download(url: str, deadline: float) -> bytes:
    try:
        # A session of its own: the relay key must not travel to the video host.
        response = _local_session().get(url, timeout=_remaining(deadline))
    except requests.RequestException as error:
        raise DemoError(f"downloading {url} failed: {error}") from None
    if response.status_code != 200:
        raise DemoError(f"downloading {url} answered HTTP {response.status_code}")
    if response.content[4:8] != b"ftyp":
        raise DemoError(f"{url} is not an MP4 (no ftyp box at the start)")
    return response.content


def _status_in(callback_body: str) -> str:
    try:
        return str(json.loads(callback_body).get("task_status"))
    except (ValueError, AttributeError):
        return "(not a task object)"


def _remaining(deadline: float) -> float:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise DemoError("the demo ran out of time")
    return min(remaining, 10.0)
