import hashlib
import secrets

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import F, Q
from django.utils import timezone
from django.utils.crypto import salted_hmac

API_KEY_PREFIX = "kr-"


def hash_api_key(raw_key: str) -> str:
    # Keys are 256-bit random strings, so a plain SHA-256 cannot be brute-forced and
    # lets the key be found by an indexed lookup on every request.
    return hashlib.sha256(raw_key.encode()).hexdigest()


class Account(models.Model):
    """A consumer's quota. `quota - reserved` is what new tasks may still reserve."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="account"
    )
    quota = models.BigIntegerField(
        default=0, help_text="Quota units owned (top-ups minus charges)."
    )
    reserved = models.BigIntegerField(
        default=0, help_text="Quota held by unfinished tasks.", editable=False
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "consumer"
        constraints = [
            models.CheckConstraint(
                condition=Q(reserved__gte=0), name="account_reserved_not_negative"
            ),
            models.CheckConstraint(
                condition=Q(quota__gte=F("reserved")), name="account_quota_covers_reserved"
            ),
        ]

    def __str__(self) -> str:
        return self.user.get_username()

    @property
    def available(self) -> int:
        return self.quota - self.reserved

    def clean(self) -> None:
        if self.quota < self.reserved:
            raise ValidationError(
                {"quota": f"Quota cannot go below the {self.reserved} units held by running tasks."}
            )


class ApiKey(models.Model):
    """A relay key. Only its hash is stored; the full key is shown once, when issued."""

    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100, blank=True)
    prefix = models.CharField(max_length=16, editable=False)
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    # Kling-style credentials: clients sign a JWT with the secret key, exactly as for
    # Kling. The secret is derived from SECRET_KEY and the access key, never stored.
    access_key = models.CharField(max_length=40, unique=True, null=True, editable=False)
    is_active = models.BooleanField(default=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.name or 'unnamed'})"

    @classmethod
    def issue(cls, account: Account, name: str = "", expires_at=None) -> tuple["ApiKey", str]:
        """Create a key; returns the row and the full key, which is never stored.

        The row also gets a Kling-style access key; `secret_key` and `webhook_secret`
        are derived on demand and shown with the key.
        """
        raw_key = API_KEY_PREFIX + secrets.token_urlsafe(32)
        api_key = cls.objects.create(
            account=account,
            name=name,
            prefix=raw_key[:10],
            key_hash=hash_api_key(raw_key),
            access_key="AK" + secrets.token_hex(16),
            expires_at=expires_at,
        )
        return api_key, raw_key

    @property
    def secret_key(self) -> str:
        """The Kling-style secret key paired with `access_key` (HMAC of it with SECRET_KEY)."""
        return salted_hmac(
            "billing.consumer-secret-key", self.access_key or "", algorithm="sha256"
        ).hexdigest()

    @property
    def webhook_secret(self) -> str:
        """Signs the callbacks forwarded to this key's consumer (header X-Relay-Signature)."""
        return (
            "whsec_"
            + salted_hmac("billing.webhook-secret", self.key_hash, algorithm="sha256").hexdigest()
        )

    def revoke(self) -> None:
        self.is_active = False
        self.revoked_at = timezone.now()
        self.save(update_fields=["is_active", "revoked_at"])

    @property
    def is_expired(self) -> bool:
        return self.expires_at is not None and self.expires_at <= timezone.now()


class Price(models.Model):
    """Quota units for one kind of task. Empty action/sound match any action/sound."""

    model_name = models.CharField(max_length=100)
    mode = models.CharField(max_length=20, default="std")
    duration = models.CharField(max_length=10, default="5", help_text="Seconds, as Kling sends it.")
    action = models.CharField(
        max_length=40, blank=True, help_text="e.g. text2video; empty = every action."
    )
    sound = models.CharField(
        max_length=3, blank=True, choices=[("", "any"), ("on", "on"), ("off", "off")]
    )
    quota = models.PositiveBigIntegerField()
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["model_name", "mode", "duration", "action", "sound"], name="unique_price"
            )
        ]
        ordering = ["model_name", "mode", "duration", "action", "sound"]

    def __str__(self) -> str:
        parts = [self.model_name, self.mode, f"{self.duration}s"]
        parts += [p for p in (self.action, self.sound and f"sound {self.sound}") if p]
        return " / ".join(parts)


class LedgerEntry(models.Model):
    """Every change of a consumer's quota. A task is charged by at most one row."""

    class Kind(models.TextChoices):
        TOPUP = "topup", "Top-up"
        CHARGE = "charge", "Charge"
        ADJUSTMENT = "adjustment", "Adjustment"

    account = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="ledger")
    kind = models.CharField(max_length=12, choices=Kind.choices)
    amount = models.BigIntegerField(help_text="Positive adds quota, negative takes it.")
    balance_after = models.BigIntegerField()
    # The VideoTask id a charge is for. Unique: the database itself refuses a second charge.
    charged_task_id = models.BigIntegerField(null=True, blank=True, unique=True)
    api_key = models.ForeignKey(ApiKey, null=True, blank=True, on_delete=models.SET_NULL)
    note = models.CharField(max_length=255, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        verbose_name_plural = "ledger entries"
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} {self.amount:+d} ({self.account})"
