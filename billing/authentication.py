from django.utils import timezone
from rest_framework import authentication, exceptions

from .models import ApiKey
from .services import authenticate_api_key


class RelayKeyAuthentication(authentication.BaseAuthentication):
    """`Authorization: Bearer <relay key>`; request.user is the consumer, request.auth the key."""

    keyword = "bearer"

    def authenticate(self, request):
        header = authentication.get_authorization_header(request).decode("latin-1").strip()
        if not header:
            return None  # DRF answers NotAuthenticated: Kling's 401 / 1001
        scheme, _, raw_key = header.partition(" ")
        raw_key = raw_key.strip()
        if scheme.lower() != self.keyword or not raw_key or " " in raw_key:
            raise exceptions.AuthenticationFailed("Authorization header is invalid")
        api_key = authenticate_api_key(raw_key)
        if api_key is None:
            raise exceptions.AuthenticationFailed("API key is invalid, revoked or expired")
        self._touch(api_key)
        return api_key.account.user, api_key

    def authenticate_header(self, request) -> str:
        # A WWW-Authenticate value makes DRF answer 401 (not 403) for missing credentials.
        return 'Bearer realm="kling"'

    @staticmethod
    def _touch(api_key: ApiKey) -> None:
        now = timezone.now()
        # At most one write a minute per key: a busy key must not turn reads into writes.
        if api_key.last_used_at is None or (now - api_key.last_used_at).total_seconds() > 60:
            ApiKey.objects.filter(pk=api_key.pk).update(last_used_at=now)
