from django.core.management.base import BaseCommand, CommandError

from billing.services import top_up

from ._consumers import create_account


class Command(BaseCommand):
    help = "Create an API consumer (a user with a quota account), optionally with quota."

    def add_arguments(self, parser) -> None:
        parser.add_argument("username")
        parser.add_argument("--quota", type=int, default=0, help="initial quota (a top-up)")

    def handle(self, *args, **options) -> None:
        if options["quota"] < 0:
            raise CommandError("--quota must not be negative")
        account, created = create_account(options["username"])
        if options["quota"]:
            top_up(account=account, amount=options["quota"], note="initial quota")
            account.refresh_from_db()
        verb = "Created" if created else "Consumer already exists:"
        self.stdout.write(
            f"{verb} {account} (quota {account.quota}, available {account.available})"
        )
