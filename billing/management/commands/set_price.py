from django.core.management.base import BaseCommand, CommandError

from billing.models import Price


class Command(BaseCommand):
    help = "Set the quota price of a model × mode × duration (× action, × sound)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("model")
        parser.add_argument("--mode", default="std")
        parser.add_argument("--duration", default="5", help="seconds, e.g. 5 or 10")
        parser.add_argument("--quota", type=int, required=True)
        parser.add_argument("--action", default="", help="e.g. text2video; empty: any action")
        parser.add_argument("--sound", default="", choices=["", "on", "off"])

    def handle(self, *args, **options) -> None:
        if options["quota"] < 0:
            raise CommandError("--quota must not be negative")
        price, created = Price.objects.update_or_create(
            model_name=options["model"],
            mode=options["mode"],
            duration=str(options["duration"]),
            action=options["action"],
            sound=options["sound"],
            defaults={"quota": options["quota"]},
        )
        self.stdout.write(f"{'Created' if created else 'Updated'} price {price}: {price.quota}")
