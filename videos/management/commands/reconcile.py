import signal
import time

from django.core.management.base import BaseCommand

from videos.reconcile import reconcile


class Command(BaseCommand):
    help = (
        "Ask Kling about tasks whose news never came, adopt or fail interrupted submits, "
        "give up tasks that are too old, replay interrupted callbacks. Safe to run on "
        "several machines at once. With --loop, runs every --interval seconds."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--loop", action="store_true", help="keep running")
        parser.add_argument("--interval", type=float, default=30.0)
        parser.add_argument("--limit", type=int, default=None, help="tasks per pass")

    def handle(self, *args, **options) -> None:
        stopping = False

        def stop(*_) -> None:
            nonlocal stopping
            stopping = True

        if options["loop"]:
            signal.signal(signal.SIGTERM, stop)
            signal.signal(signal.SIGINT, stop)
        while True:
            report = reconcile(limit=options["limit"])
            self.stdout.write(f"{time.strftime('%H:%M:%S')} {report}")
            for error in report.errors:
                self.stderr.write(error)
            if not options["loop"]:
                return
            deadline = time.monotonic() + options["interval"]
            while not stopping and time.monotonic() < deadline:
                time.sleep(0.2)
            if stopping:
                return
