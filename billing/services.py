"""Quota rules: prices, reservation at submit, one charge on success, release on failure.

Every function that changes an account locks its row with select_for_update first, so
`quota - reserved` never goes below zero whatever runs concurrently, and every change of
`quota` writes a ledger row. Called inside a caller's transaction (submit, transition),
they join it without a savepoint: a failure fails the whole step, as it must.
"""

import logging

import jwt
from django.conf import settings
from django.db import transaction
from django.db.models import Q

from klingrelay.errors import InsufficientQuota, InvalidParameter
from klingrelay.memo import BoundedCache
from klingrelay.metrics import (
    count_charge_on_commit,
    count_release_on_commit,
    count_reservation_on_commit,
)

from .models import Account, ApiKey, LedgerEntry, Price, hash_api_key

logger = logging.getLogger(__name__)


def price_for(*, action: str, model_name: str, mode: str, duration: str, sound: str = "") -> int:
    """Quota units for a task. The most specific price wins; no price means not offered."""
    candidates = Price.objects.filter(
        Q(action=action) | Q(action=""),
        Q(sound=sound) | Q(sound=""),
        model_name=model_name,
        mode=mode,
        duration=duration,
    )
    best = max(candidates, key=lambda p: (p.action != "", p.sound != ""), default=None)
    if best is None:
        raise InvalidParameter(
            f"model_name '{model_name}' with mode '{mode}' and duration '{duration}' "
            f"is not offered by this relay for {action} (no price is set)"
        )
    return best.quota


def reserve_quota(*, account_id: int, amount: int) -> None:
    """Hold `amount` for a new task, or raise InsufficientQuota. Call inside a transaction
    that also creates the task, so the hold and the task exist together or not at all."""
    with transaction.atomic(savepoint=False):
        account = Account.objects.select_for_update().get(pk=account_id)
        if account.quota - account.reserved < amount:
            raise InsufficientQuota(
                f"Insufficient quota: this task costs {amount}, "
                f"{max(account.quota - account.reserved, 0)} is available"
            )
        account.reserved += amount
        account.save(update_fields=["reserved", "updated_at"])
        count_reservation_on_commit(amount)


def release_reservation(*, account_id: int, amount: int) -> None:
    """Give back a hold whose task will never be charged (failed or abandoned)."""
    if amount <= 0:
        return
    with transaction.atomic(savepoint=False):
        account = Account.objects.select_for_update().get(pk=account_id)
        account.reserved -= amount
        account.save(update_fields=["reserved", "updated_at"])
        count_release_on_commit(amount)


def charge_reservation(
    *, account_id: int, task_ref: int, amount: int, api_key_id: int | None, note: str = ""
) -> LedgerEntry | None:
    """Turn a task's hold into a charge: one ledger row, quota and reserved both lowered.

    Returns None (and changes nothing) when the task was already charged: the unique
    `charged_task_id` makes a second charge impossible even if a caller slips.
    """
    with transaction.atomic(savepoint=False):
        account = Account.objects.select_for_update().get(pk=account_id)
        if LedgerEntry.objects.filter(charged_task_id=task_ref).exists():
            logger.error("task %s is already charged; second charge refused", task_ref)
            return None
        account.quota -= amount
        account.reserved -= amount
        account.save(update_fields=["quota", "reserved", "updated_at"])
        count_charge_on_commit(amount)
        return LedgerEntry.objects.create(
            account=account,
            kind=LedgerEntry.Kind.CHARGE,
            amount=-amount,
            balance_after=account.quota,
            charged_task_id=task_ref,
            api_key_id=api_key_id,
            note=note[:255],
        )


def top_up(*, account: Account, amount: int, note: str = "") -> LedgerEntry:
    """Add (or with a negative amount, take back) quota, with its ledger row."""
    if amount == 0:
        raise ValueError("amount must not be zero")
    with transaction.atomic():
        locked = Account.objects.select_for_update().get(pk=account.pk)
        if locked.quota + amount < locked.reserved:
            raise ValueError(
                f"cannot take {-amount}: only {locked.quota - locked.reserved} is not reserved"
            )
        locked.quota += amount
        locked.save(update_fields=["quota", "updated_at"])
        return LedgerEntry.objects.create(
            account=locked,
            kind=LedgerEntry.Kind.TOPUP if amount > 0 else LedgerEntry.Kind.ADJUSTMENT,
            amount=amount,
            balance_after=locked.quota,
            note=note[:255],
        )


# Keys are looked up on every request; a short per-process cache saves that query. The
# price: revoking, expiring or deactivating a key takes up to API_KEY_CACHE_SECONDS.
_api_keys: BoundedCache[ApiKey | None] = BoundedCache(
    10_000, ttl_seconds=lambda: settings.API_KEY_CACHE_SECONDS
)


def authenticate_api_key(raw_key: str) -> ApiKey | None:
    """The active, unexpired key with this value, or None."""
    key_hash = hash_api_key(raw_key)
    api_key = _api_keys.get_or_load(
        ("key", key_hash),
        lambda: ApiKey.objects.select_related("account__user").filter(key_hash=key_hash).first(),
    )
    return api_key if _usable(api_key) else None


def authenticate_access_key_token(token: str) -> ApiKey | None:
    """The key whose access key issued this Kling-style JWT (HS256, iss, exp, nbf).

    Raises jwt.InvalidTokenError subclasses for expired, not-yet-valid or badly signed
    tokens; returns None when the issuer is unknown or its key is not usable.
    """
    issuer = jwt.decode(token, options={"verify_signature": False}).get("iss")
    if not isinstance(issuer, str) or not issuer:
        raise jwt.InvalidTokenError("no issuer")
    api_key = _api_keys.get_or_load(
        ("access_key", issuer),
        lambda: ApiKey.objects.select_related("account__user").filter(access_key=issuer).first(),
    )
    if api_key is None:
        return None
    jwt.decode(
        token,
        api_key.secret_key,
        algorithms=["HS256"],
        options={"require": ["iss", "exp"]},
        leeway=settings.CONSUMER_JWT_LEEWAY,
    )
    return api_key if _usable(api_key) else None


def _usable(api_key: ApiKey | None) -> bool:
    return (
        api_key is not None
        and api_key.is_active
        and not api_key.is_expired
        and api_key.account.user.is_active
    )
