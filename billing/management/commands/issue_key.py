from django.core.management.base import BaseCommand

from billing.models import ApiKey

from ._consumers import get_account


class Command(BaseCommand):
    help = "Issue an API key for a consumer. The key is printed once, alone on the last line."

    def add_arguments(self, parser) -> None:
        parser.add_argument("username")
        parser.add_argument("--name", default="", help="a label for the key")

    def handle(self, *args, **options) -> None:
        account = get_account(options["username"])
        api_key, raw_key = ApiKey.issue(account, name=options["name"])
        self.stdout.write(
            f"Issued key {api_key.prefix}… for {account}; store it now, it is not kept:"
        )
        self.stdout.write(raw_key)
