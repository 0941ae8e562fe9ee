import itertools
import threading

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone

from .credentials import KlingCredential, mask_secret, parse_channel_keys


def default_base_url() -> str:
    return settings.KLING_DEFAULT_BASE_URL


class Channel(models.Model):
    """An upstream Kling account (or several keys of one operator) the relay sends work to."""

    TYPE_KLING = 41
    TYPE_CHOICES = [(TYPE_KLING, "Kling")]

    class Status(models.IntegerChoices):
        ENABLED = 1, "Enabled"
        DISABLED = 2, "Disabled by admin"
        AUTO_DISABLED = 3, "Disabled automatically"

    name = models.CharField(max_length=100, unique=True)
    type = models.PositiveSmallIntegerField(choices=TYPE_CHOICES, default=TYPE_KLING)
    key = models.TextField(
        help_text="One Kling key per line, as ACCESS_KEY|SECRET_KEY. Several keys are used in turn."
    )
    base_url = models.URLField(
        default=default_base_url,
        help_text="Kling API host, e.g. https://api-singapore.klingai.com",
    )
    model_names = models.TextField(
        blank=True,
        help_text="Model names this channel serves, comma or newline separated. Empty: all.",
    )
    priority = models.IntegerField(default=0, help_text="Higher priority channels are used first.")
    weight = models.PositiveIntegerField(
        default=1, help_text="Share of traffic within the same priority (0 = only as fallback)."
    )
    status = models.PositiveSmallIntegerField(choices=Status.choices, default=Status.ENABLED)
    disabled_reason = models.TextField(blank=True)
    disabled_at = models.DateTimeField(null=True, blank=True)
    request_count = models.PositiveBigIntegerField(default=0, editable=False)
    failure_count = models.PositiveBigIntegerField(default=0, editable=False)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-priority", "name"]
        indexes = [models.Index(fields=["status", "priority"])]

    def __str__(self) -> str:
        return self.name

    def save(self, *args, **kwargs) -> None:
        # Refuse malformed keys from every path (admin, shell, commands), not only forms.
        parse_channel_keys(self.key)
        self.base_url = self.base_url.rstrip("/")
        super().save(*args, **kwargs)

    def clean(self) -> None:
        super().clean()
        try:
            parse_channel_keys(self.key)
        except ValidationError as error:
            raise ValidationError({"key": error.messages}) from None
        if self.type != self.TYPE_KLING:
            raise ValidationError({"type": "Only Kling channels (type 41) are supported."})

    @property
    def is_enabled(self) -> bool:
        return self.status == self.Status.ENABLED

    @property
    def model_list(self) -> list[str]:
        return [m.strip() for m in self.model_names.replace("\n", ",").split(",") if m.strip()]

    def serves(self, model_name: str) -> bool:
        allowed = self.model_list
        return not allowed or model_name in allowed

    def credentials(self) -> list[KlingCredential]:
        return parse_channel_keys(self.key)

    def next_credential(self) -> KlingCredential:
        """The channel's keys in turn (round robin within this process)."""
        credentials = self.credentials()
        return credentials[next(_rotation_counter(self.pk)) % len(credentials)]

    @property
    def masked_key(self) -> str:
        try:
            return ", ".join(mask_secret(c.access_key) + "|****" for c in self.credentials())
        except ValidationError:
            return "(invalid)"

    def disable_automatically(self, reason: str) -> None:
        Channel.objects.filter(pk=self.pk, status=self.Status.ENABLED).update(
            status=self.Status.AUTO_DISABLED,
            disabled_reason=reason[:1000],
            disabled_at=timezone.now(),
            updated_at=timezone.now(),
        )

    def enable(self) -> None:
        Channel.objects.filter(pk=self.pk).update(
            status=self.Status.ENABLED,
            disabled_reason="",
            disabled_at=None,
            updated_at=timezone.now(),
        )


_rotation_counters: dict[int, "itertools.count[int]"] = {}
_rotation_lock = threading.Lock()


def _rotation_counter(channel_id: int) -> "itertools.count[int]":
    with _rotation_lock:
        return _rotation_counters.setdefault(channel_id, itertools.count())
