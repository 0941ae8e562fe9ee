from django.core.management.base import BaseCommand, CommandError

from channels_app.models import Channel
from channels_app.services import test_channel


class Command(BaseCommand):
    help = "Call Kling with each key of a channel; re-enable it when every key works."

    def add_arguments(self, parser) -> None:
        parser.add_argument("name")
        parser.add_argument("--no-enable", action="store_true", help="only report")

    def handle(self, *args, **options) -> None:
        channel = Channel.objects.filter(name=options["name"]).first()
        if channel is None:
            raise CommandError(f"No channel named '{options['name']}'")
        result = test_channel(channel, enable_on_success=not options["no_enable"])
        if not result.ok:
            raise CommandError(f"{channel}: test failed: {result.detail}")
        channel.refresh_from_db()
        self.stdout.write(
            f"{channel}: test passed ({result.detail}); {channel.get_status_display()}"
        )
