"""The local demo: seeding, the scripted drive, and `manage.py rundemo` as a real process."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.contrib.auth import get_user_model

from billing.models import Account, ApiKey, LedgerEntry, Price
from billing.services import authenticate_api_key, price_for, top_up
from channels_app.models import Channel
from tests.e2e_support import (
    free_port,
    local_session,
    wait_for,
)
from videos.demo import (
    ADMIN_USERNAME,
    CHANNEL_NAME,
    DEMO_CONSUMER,
    DEMO_QUOTA,
    SIMULATOR_MODELS,
    DemoError,
    describe,
    drive,
    seed_demo,
)
from videos.simulator import DEFAULT_ACCESS_KEY, DEFAULT_SECRET_KEY, FAIL_MARKER, KlingSimulator

SIM_URL = "http://127.0.0.1:9100"


def seed(state_dir: Path, simulator_url: str = SIM_URL):
    return seed_demo(simulator_url=simulator_url, state_dir=state_dir)


def row_counts() -> dict[str, int]:
    return {
        "users": get_user_model().objects.count(),
        "accounts": Account.objects.count(),
        "keys": ApiKey.objects.count(),
        "channels": Channel.objects.count(),
        "prices": Price.objects.count(),
        "ledger": LedgerEntry.objects.count(),
    }


# --- seeding ---------------------------------------------------------------------------


def test_seeding_creates_what_the_demo_needs(db, tmp_path):
    demo = seed(tmp_path)

    admin = get_user_model().objects.get(username=ADMIN_USERNAME)
    assert admin.is_superuser and admin.is_staff
    assert demo.admin_password and admin.check_password(demo.admin_password)
    channel = Channel.objects.get()
    assert (channel.name, channel.base_url, channel.is_enabled) == (CHANNEL_NAME, SIM_URL, True)
    assert channel.key == f"{DEFAULT_ACCESS_KEY}|{DEFAULT_SECRET_KEY}"
    assert demo.account.user.username == DEMO_CONSUMER
    assert (demo.account.quota, demo.account.reserved) == (DEMO_QUOTA, 0)
    [top_up] = LedgerEntry.objects.all()
    assert (top_up.kind, top_up.amount, top_up.balance_after) == ("topup", DEMO_QUOTA, DEMO_QUOTA)
    assert authenticate_api_key(demo.raw_key) == demo.api_key
    assert demo.api_key.account == demo.account


@pytest.mark.parametrize(
    ("action", "model_name", "mode", "duration", "quota"),
    [
        ("text2video", "kling-v1", "std", "5", 100),
        ("text2video", "kling-v2-5-turbo", "pro", "10", 700),
        ("multi-image2video", "kling-v1-6", "std", "10", 200),
        ("omni-video", "kling-video-o1", "std", "3", 60),
        ("omni-video", "kling-video-o1", "pro", "7", 490),
        ("video-extend", "kling-v2-1-master", "pro", "5", 350),
    ],
)
def test_seeded_prices_cover_the_simulators_models(
    db, tmp_path, action, model_name, mode, duration, quota
):
    seed(tmp_path)

    assert price_for(action=action, model_name=model_name, mode=mode, duration=duration) == quota
    for model in SIMULATOR_MODELS:
        for mode_name in ("std", "pro"):
            assert Price.objects.filter(
                model_name=model, mode=mode_name, duration="5", action="video-extend"
            ).exists()


def test_seeding_again_changes_nothing_and_shows_the_same_secrets(db, tmp_path):
    first = seed(tmp_path)
    counts = row_counts()

    again = seed(tmp_path)

    assert row_counts() == counts
    assert (again.admin_password, again.raw_key) == (first.admin_password, first.raw_key)
    assert again.account.quota == DEMO_QUOTA


def test_secrets_are_kept_private_in_the_state_directory(db, tmp_path):
    state_dir = tmp_path / "run"
    demo = seed(state_dir)

    state_file = state_dir / "demo.json"
    assert stat.S_IMODE(state_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(state_dir.stat().st_mode) == 0o700
    text = state_file.read_text()
    assert demo.raw_key in text and demo.admin_password in text


def test_a_state_file_left_open_is_closed_again(db, tmp_path):
    seed(tmp_path)
    (tmp_path / "demo.json").chmod(0o644)

    seed(tmp_path)

    assert stat.S_IMODE((tmp_path / "demo.json").stat().st_mode) == 0o600


def test_a_lost_state_file_neither_resets_nor_shows_the_admin_password(db, tmp_path):
    first = seed(tmp_path)
    (tmp_path / "demo.json").unlink()

    again = seed(tmp_path)

    assert again.admin_password is None
    assert (
        get_user_model().objects.get(username=ADMIN_USERNAME).check_password(first.admin_password)
    )
    assert "changepassword" in "\n".join(describe(again, "http://relay"))
    # The old key cannot be shown again, so a new one is issued; quota is not topped up twice.
    assert again.raw_key != first.raw_key and authenticate_api_key(again.raw_key)
    assert LedgerEntry.objects.count() == 1


def test_an_admin_made_by_someone_else_is_left_alone(db, tmp_path):
    get_user_model().objects.create_superuser(ADMIN_USERNAME, password="theirs-1234")

    demo = seed(tmp_path)

    assert demo.admin_password is None
    assert get_user_model().objects.get(username=ADMIN_USERNAME).check_password("theirs-1234")


def test_prices_an_admin_changed_are_kept(db, tmp_path):
    seed(tmp_path)
    Price.objects.filter(model_name="kling-v1", mode="std", duration="5", action="").update(quota=1)

    seed(tmp_path)

    assert price_for(action="text2video", model_name="kling-v1", mode="std", duration="5") == 1


def test_the_channel_follows_the_simulator_and_is_reenabled(db, tmp_path):
    seed(tmp_path)
    Channel.objects.get().disable_automatically("Kling answered HTTP 401 code 1002")

    seed(tmp_path, simulator_url="http://127.0.0.1:9200")

    channel = Channel.objects.get()
    assert (channel.base_url, channel.is_enabled, channel.disabled_reason) == (
        "http://127.0.0.1:9200",
        True,
        "",
    )


def test_the_channel_an_admin_disabled_stays_disabled(db, tmp_path):
    seed(tmp_path)
    Channel.objects.update(status=Channel.Status.DISABLED)

    seed(tmp_path)

    assert Channel.objects.get().status == Channel.Status.DISABLED


def test_describe_shows_everything_needed_to_try_the_relay(db, tmp_path):
    demo = seed(tmp_path)

    text = "\n".join(describe(demo, "http://127.0.0.1:8000"))

    assert "http://127.0.0.1:8000/admin/" in text
    assert f"login:          {ADMIN_USERNAME}" in text and demo.admin_password in text
    assert demo.raw_key in text
    assert demo.api_key.access_key in text and demo.api_key.secret_key in text
    assert "curl -s http://127.0.0.1:8000/kling/v1/videos/text2video" in text


# --- the drive, in process against live_server -----------------------------------------------


@pytest.fixture
def running_demo(live_server, settings, transactional_db, tmp_path):
    settings.SERVER_ADDRESS = live_server.url
    with KlingSimulator(speed=20) as sim:
        yield seed(tmp_path, simulator_url=sim.url), live_server.url


def test_drive_runs_one_task_end_to_end_and_checks_the_charge(running_demo):
    demo, relay_url = running_demo
    lines: list[str] = []

    result = drive(
        relay_url=relay_url, raw_key=demo.raw_key, account=demo.account, write=lines.append
    )

    assert result.statuses[-1] == "succeed"
    assert (result.quota_before, result.quota_after, result.charged) == (DEMO_QUOTA, 9900, 100)
    assert result.video_bytes > 0 and result.video_url.endswith(".mp4")
    assert [line[:5] for line in lines if line.startswith("[")] == [
        f"[{step}/6]" for step in range(1, 7)
    ]
    assert LedgerEntry.objects.filter(kind="charge").count() == 1


def test_drive_reports_a_failed_task(running_demo):
    demo, relay_url = running_demo

    with pytest.raises(DemoError, match="failed"):
        drive(
            relay_url=relay_url,
            raw_key=demo.raw_key,
            account=demo.account,
            write=lambda line: None,
            prompt=f"a cat {FAIL_MARKER}",
        )

    demo.account.refresh_from_db()
    assert (demo.account.quota, demo.account.reserved) == (DEMO_QUOTA, 0)


def test_drive_reports_a_refused_key(running_demo):
    demo, relay_url = running_demo

    with pytest.raises(DemoError, match="HTTP 401"):
        drive(relay_url=relay_url, raw_key="kr-wrong", account=demo.account, write=print)


def test_drive_says_how_to_top_up_when_the_quota_is_spent(running_demo):
    demo, relay_url = running_demo
    top_up(account=demo.account, amount=-(DEMO_QUOTA - 50), note="spent")

    with pytest.raises(DemoError, match=f"topup {DEMO_CONSUMER}"):
        drive(relay_url=relay_url, raw_key=demo.raw_key, account=demo.account, write=print)


# --- rundemo as a real process ------------------------------------------------------------


@pytest.fixture(scope="module")
def migrated_template(tmp_path_factory) -> Path:
    """A migrated SQLite file, copied for each test: migrating takes a second or so."""
    path = tmp_path_factory.mktemp("demo-template") / "db.sqlite3"
    result = subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v0"],
        cwd=django_settings.BASE_DIR,
        env=demo_env(path),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return path


def demo_env(database: Path) -> dict[str, str]:
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in ("DEBUG", "SERVER_ADDRESS", "DJANGO_SETTINGS_MODULE")
    }
    env["DATABASE_URL"] = f"sqlite:///{database}"
    return env


@pytest.fixture
def demo_database(migrated_template, tmp_path) -> Path:
    path = tmp_path / "db.sqlite3"
    shutil.copyfile(migrated_template, path)
    return path


def rundemo_command(state_dir: Path, port: int, sim_port: int, *extra: str) -> list[str]:
    return [
        sys.executable,
        "manage.py",
        "rundemo",
        "--port",
        str(port),
        "--sim-port",
        str(sim_port),
        "--speed",
        "20",
        "--state-dir",
        str(state_dir),
        *extra,
    ]


def run_drive(database: Path, state_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our own interpreter, fixed args
        rundemo_command(state_dir, free_port(), free_port(), "--drive"),
        cwd=django_settings.BASE_DIR,
        env=demo_env(database),
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


def printed(output: str, label: str) -> str:
    match = re.search(rf"^\s*{label}:\s+(\S+)", output, re.MULTILINE)
    assert match, f"no '{label}' line in:\n{output}"
    return match.group(1)


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def test_rundemo_drive_runs_a_task_end_to_end_and_exits_0(demo_database, tmp_path):
    state_dir = tmp_path / "run"

    first = run_drive(demo_database, state_dir)
    second = run_drive(demo_database, state_dir)

    assert first.returncode == 0, first.stdout + first.stderr
    assert second.returncode == 0, second.stdout + second.stderr
    out = first.stdout
    assert re.search(r"^Admin:\s+http://127\.0\.0\.1:\d+/admin/$", out, re.MULTILINE)
    assert printed(out, "login") == ADMIN_USERNAME
    assert printed(out, "API key").startswith("kr-")
    assert printed(out, "access key").startswith("AK")
    assert re.search(r"curl -s http://127\.0\.0\.1:\d+/kling/v1/videos/text2video", out)
    for step in ("[1/6] quota before: 10000", "succeed", "ftyp", "[6/6] quota after: 9900"):
        assert step in out
    assert "Demo finished" in out and "Stopped the relay" in out
    # The second run reuses what the first seeded and shows the same secrets.
    for label in ("password", "API key", "access key", "secret key"):
        assert printed(second.stdout, label) == printed(out, label)
    assert "[6/6] quota after: 9800" in second.stdout
    assert stat.S_IMODE((state_dir / "demo.json").stat().st_mode) == 0o600


class RunningDemo:
    """`rundemo` (without --drive) in its own process group, its output read as it comes."""

    def __init__(self, database: Path, state_dir: Path, *, as_background_job: bool) -> None:
        self.port, self.sim_port = free_port(), free_port()
        command = rundemo_command(state_dir, self.port, self.sim_port)
        if as_background_job:  # a shell starts background jobs with SIGINT ignored
            command = ["sh", "-c", 'trap "" INT; exec "$0" "$@"', *command]
        self.process = subprocess.Popen(  # noqa: S603 - our own interpreter, fixed args
            command,
            cwd=django_settings.BASE_DIR,
            env=demo_env(database),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # so a failed test can stop the whole group it started
        )
        self._lines: list[str] = []
        # Drained all along: a full pipe would block the demo and its subprocesses.
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.append(line)

    def output(self) -> str:
        return "".join(self._lines)

    def wait_for_output(self, text: str, timeout: float) -> None:
        def shown() -> bool:
            if self.process.poll() is not None and text not in self.output():
                self._reader.join(timeout=5)
                pytest.fail(f"rundemo exited with {self.process.returncode}:\n{self.output()}")
            return text in self.output()

        wait_for(shown, timeout=timeout, interval=0.1, what=f"rundemo to print {text!r}")

    def stop(self, signum: int, *, whole_group: bool, timeout: float) -> int:
        """Signal the demo (or, like Ctrl-C in a terminal, its whole process group); return
        its exit code once it and everything it started are gone."""
        if whole_group:
            os.killpg(self.process.pid, signum)
        else:
            self.process.send_signal(signum)
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"rundemo did not stop within {timeout:g} s of SIGTERM:\n{self.output()}")
        # EOF comes once no process of the demo holds its output any more.
        self._reader.join(timeout=timeout)
        assert not self._reader.is_alive(), (
            f"something rundemo started survived it:\n{self.output()}"
        )
        return code

    def kill(self) -> None:
        if self.process.poll() is None or self._reader.is_alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


STOPS = [
    pytest.param(signal.SIGTERM, False, id="sigterm"),
    pytest.param(signal.SIGINT, True, id="ctrl-c-to-the-group"),
]


@pytest.mark.parametrize(("signum", "whole_group"), STOPS)
def test_rundemo_serves_until_stopped_then_stops_everything(
    demo_database, tmp_path, signum, whole_group
):
    demo = RunningDemo(demo_database, tmp_path / "run", as_background_job=whole_group)
    try:
        demo.wait_for_output("Press Ctrl-C to stop.", timeout=60)
        http = local_session()

        login = http.get(f"http://127.0.0.1:{demo.port}/admin/login/", timeout=10)
        health = http.get(f"http://127.0.0.1:{demo.sim_port}/_sim/health", timeout=10)
        unauthenticated = http.get(f"http://127.0.0.1:{demo.port}/kling/v1/videos/1", timeout=10)

        assert login.status_code == 200
        assert health.json()["ok"] is True
        assert (unauthenticated.status_code, unauthenticated.json()["code"]) == (401, 1001)
        assert demo.stop(signum, whole_group=whole_group, timeout=45) == 0, demo.output()
        assert "Stopped the relay" in demo.output()
        assert port_is_free(demo.port) and port_is_free(demo.sim_port)
    finally:
        demo.kill()


def test_rundemo_says_clearly_when_the_port_is_taken(demo_database, tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(  # noqa: S603 - our own interpreter, fixed args
            rundemo_command(tmp_path / "run", port, free_port(), "--drive"),
            cwd=django_settings.BASE_DIR,
            env=demo_env(demo_database),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    assert result.returncode != 0
    assert f"port {port} on 127.0.0.1 is not free" in result.stderr
