from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from channels_app.models import Channel


class Command(BaseCommand):
    help = "Create (or update, by name) a Kling channel: an upstream account the relay uses."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--name", required=True)
        parser.add_argument(
            "--key", required=True, help="AK|SK; several keys separated by newlines"
        )
        parser.add_argument("--base-url", default=None, help="Kling host (default: the global one)")
        parser.add_argument("--models", default="", help="comma separated model names; empty: all")
        parser.add_argument("--priority", type=int, default=0)
        parser.add_argument("--weight", type=int, default=1)

    def handle(self, *args, **options) -> None:
        channel = Channel.objects.filter(name=options["name"]).first() or Channel(
            name=options["name"]
        )
        created = channel.pk is None
        channel.key = options["key"].replace("\\n", "\n")
        if options["base_url"]:
            channel.base_url = options["base_url"]
        channel.model_names = options["models"]
        channel.priority = options["priority"]
        if options["weight"] < 0:
            raise CommandError("--weight must be 0 or more")
        channel.weight = options["weight"]
        try:
            channel.full_clean()
        except ValidationError as error:
            raise CommandError(_describe(error)) from None
        channel.save()
        verb = "Created" if created else "Updated"
        self.stdout.write(
            f"{verb} channel #{channel.pk} '{channel.name}' → {channel.base_url} "
            f"(keys: {channel.masked_key}; models: {channel.model_names or 'all'}; "
            f"priority {channel.priority}, weight {channel.weight})"
        )


def _describe(error: ValidationError) -> str:
    return "; ".join(f"{field}: {' '.join(msgs)}" for field, msgs in error.message_dict.items())
