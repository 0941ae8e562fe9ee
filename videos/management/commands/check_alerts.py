from dataclasses import asdict

from django.conf import settings
from django.core.management.base import BaseCommand

from videos.alerts import check_alerts


class Command(BaseCommand):
    help = (
        "Count stuck tasks, failed callbacks, failed charges and automatically disabled "
        "channels; warn about those at their ALERT_* threshold and post them to "
        "ALERT_WEBHOOK_URL (at most once per ALERT_REPEAT_SECONDS). The reconcile loop "
        "does the same after every pass; this is for cron or a quick look."
    )

    def handle(self, *args, **options) -> None:
        check = check_alerts()
        for kind, count in asdict(check.counts).items():
            threshold = check.thresholds[kind]
            flag = "  ALERT" if kind in check.raised else ""
            self.stdout.write(f"{kind}: {count} (threshold {threshold or 'off'}){flag}")
        if check.notified:
            self.stdout.write(f"alert posted to the webhook: {', '.join(check.notified)}")
        elif check.raised and settings.ALERT_WEBHOOK_URL:
            self.stdout.write("webhook not posted: already alerted recently, or it failed")
        elif not check.raised:
            self.stdout.write("no alert")
