"""Run the Kling simulator in the foreground: `python manage.py klingsim`."""

from __future__ import annotations

import signal
import threading
from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from videos.simulator import DEFAULT_ACCESS_KEY, DEFAULT_SECRET_KEY, KlingSimulator


def parse_account(value: str) -> tuple[str, str]:
    """Split `AK:SK` (or a channel's `AK|SK`) into its access and secret key."""
    separator = "|" if "|" in value else ":"
    access_key, _, secret_key = value.partition(separator)
    if not access_key or not secret_key:
        raise CommandError(f"--account must look like AK:SK, got {value!r}")
    return access_key, secret_key


class Command(BaseCommand):
    help = "Run a local stand-in for Kling's video API until Ctrl-C or SIGTERM."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=9100)
        parser.add_argument(
            "--speed",
            type=float,
            default=1.0,
            help="clock factor: 10 makes tasks finish ten times sooner",
        )
        parser.add_argument(
            "--account",
            action="append",
            default=[],
            metavar="AK:SK",
            help="an access/secret key pair to accept (repeatable; default: the demo pair)",
        )
        parser.add_argument(
            "--public-url",
            default=None,
            help="base URL put in video links when clients reach the simulator by another name",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        pairs = [parse_account(value) for value in options["account"]]
        accounts = dict(pairs) if pairs else {DEFAULT_ACCESS_KEY: DEFAULT_SECRET_KEY}
        if options["speed"] <= 0:
            raise CommandError("--speed must be positive")
        simulator = KlingSimulator(
            host=options["host"],
            port=options["port"],
            accounts=accounts,
            speed=options["speed"],
            public_url=options["public_url"],
        )
        try:
            simulator.start()
        except OSError as exc:
            raise CommandError(
                f"cannot listen on {options['host']}:{options['port']}: {exc}"
            ) from exc

        stop_requested = threading.Event()
        for signal_number in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signal_number, lambda *_: stop_requested.set())
        self.stdout.write(f"Kling simulator listening on {simulator.url} (speed {simulator.speed})")
        for access_key, secret_key in accounts.items():
            self.stdout.write(f"account: {access_key}|{secret_key}")
        self.stdout.write("Press Ctrl-C to stop.")
        try:
            # A timed wait keeps the main thread responsive to signals.
            while not stop_requested.wait(0.5):
                pass
        finally:
            simulator.stop()
            self.stdout.write("Kling simulator stopped")
