"""Run the relay locally against the Kling simulator: `python manage.py rundemo [--drive]`."""

from __future__ import annotations

import logging
import signal
import time
from argparse import ArgumentParser
from pathlib import Path
from types import FrameType
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from videos.demo import DemoError, DemoStack, describe, drive, ensure_migrated, seed_demo


def _interrupt(signum: int, frame: FrameType | None) -> None:
    # SIGTERM ends the demo the way Ctrl-C does: through the cleanup in handle().
    raise KeyboardInterrupt


class Command(BaseCommand):
    help = (
        "Seed a demo (admin, simulator channel, prices, a consumer with quota and a key), "
        "start the Kling simulator, the relay under gunicorn, the task worker and the "
        "reconciler, and print "
        "how to use them. With --drive, send one task end to end and stop."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--drive", action="store_true", help="run one task, then stop")
        parser.add_argument("--port", type=int, default=8000, help="the relay's port")
        parser.add_argument("--sim-port", type=int, default=9100, help="the simulator's port")
        parser.add_argument(
            "--speed", type=float, default=5.0, help="simulator clock factor (higher: faster)"
        )
        parser.add_argument(
            "--timeout", type=float, default=60.0, help="seconds --drive may take at most"
        )
        parser.add_argument(
            "--state-dir",
            type=Path,
            default=None,
            help="where the demo keeps its secrets and logs (default: .run/ in the project)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["speed"] <= 0:
            raise CommandError("--speed must be positive")
        state_dir: Path = options["state_dir"] or Path(settings.BASE_DIR) / ".run"
        driving: bool = options["drive"]
        if driving:
            # The steps are the output; the simulator's own log lines would bury them.
            logging.getLogger("klingsim").setLevel(logging.WARNING)
        # Set explicitly: a shell starting this in the background leaves SIGINT ignored, and
        # the subprocesses would then stop on Ctrl-C while the demo kept waiting.
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, _interrupt)

        stack = DemoStack(
            port=options["port"],
            sim_port=options["sim_port"],
            speed=options["speed"],
            write=self.stdout.write,
            state_dir=state_dir,
            logs_to_files=driving,
        )
        try:
            ensure_migrated()
            seed = seed_demo(
                simulator_url=f"http://127.0.0.1:{options['sim_port']}", state_dir=state_dir
            )
            self.stdout.write(
                "Starting the Kling simulator, the relay, the task worker and the reconciler…"
            )
            stack.start()
            self.stdout.write(self.style.SUCCESS(f"Kling Relay is up on {stack.relay_url}"))
            for line in describe(seed, stack.relay_url):
                self.stdout.write(line)
            if driving:
                self.stdout.write("")
                self.stdout.write("Driving one task end to end:")
                drive(
                    relay_url=stack.relay_url,
                    raw_key=seed.raw_key,
                    account=seed.account,
                    write=self.stdout.write,
                    timeout=options["timeout"],
                )
                self.stdout.write(self.style.SUCCESS("Demo finished: every step checked out."))
            else:
                self.stdout.write("Press Ctrl-C to stop.")
                while True:
                    stack.check_alive()
                    time.sleep(0.5)
        except KeyboardInterrupt:
            if driving:
                raise CommandError("interrupted before the demo finished") from None
            self.stdout.write("")
        except DemoError as error:
            raise CommandError(f"demo failed: {error}") from None
        finally:
            # A second Ctrl-C must not leave gunicorn or the worker running.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            if stack.stop():
                self.stdout.write(
                    "Stopped the relay, the task worker, the reconciler and the simulator."
                )
