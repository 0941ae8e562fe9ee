from django.contrib.auth import get_user_model
from django.core.management.base import CommandError

from billing.models import Account


def get_account(username: str) -> Account:
    account = Account.objects.filter(user__username=username).select_related("user").first()
    if account is None:
        raise CommandError(f"No consumer named '{username}' (create it with add_consumer)")
    return account


def create_account(username: str) -> tuple[Account, bool]:
    user, user_created = get_user_model().objects.get_or_create(username=username)
    if user_created:  # consumers use API keys; they never log in
        user.set_unusable_password()
        user.save(update_fields=["password"])
    account, created = Account.objects.get_or_create(user=user)
    return account, created
