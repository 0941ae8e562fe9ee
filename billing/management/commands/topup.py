from django.core.management.base import BaseCommand, CommandError

from billing.services import top_up

from ._consumers import get_account


class Command(BaseCommand):
    help = "Add quota to a consumer (a negative amount corrects it downwards)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("username")
        parser.add_argument("amount", type=int)
        parser.add_argument("--note", default="top-up")

    def handle(self, *args, **options) -> None:
        account = get_account(options["username"])
        try:
            entry = top_up(account=account, amount=options["amount"], note=options["note"])
        except ValueError as error:
            raise CommandError(str(error)) from None
        self.stdout.write(
            f"{account}: {entry.amount:+d} → quota {entry.balance_after} (ledger #{entry.pk})"
        )
