import jwt
from django.utils import timezone
from rest_framework import authentication

from klingrelay.errors import AuthenticationFailed

from .models import ApiKey
from .services import authenticate_access_key_token, authenticate_api_key


class RelayKeyAuthentication(authentication.BaseAuthentication):
    """`Authorization: Bearer <credential>`, where the credential is either a relay key
    (`kr-…`) or a JWT signed with the consumer's access/secret key pair exactly as Kling
    expects, so an unmodified Kling client works with the consumer's AK/SK.

    request.user is the consumer, request.auth the ApiKey row.
    """

    keyword = "bearer"

    def authenticate(self, request):
        header = authentication.get_authorization_header(request).decode("latin-1").strip()
        if not header:
            return None  # DRF answers NotAuthenticated: Kling's 401 / 1001
        scheme, _, credential = header.partition(" ")
        credential = credential.strip()
        if scheme.lower() != self.keyword or not credential or " " in credential:
            raise AuthenticationFailed("Authorization header is invalid", code=1002)
        if credential.count(".") == 2:
            api_key = self._from_jwt(credential)
        else:
            api_key = authenticate_api_key(credential)
        if api_key is None:
            raise AuthenticationFailed("API key is invalid, revoked or expired", code=1002)
        self._touch(api_key)
        return api_key.account.user, api_key

    @staticmethod
    def _from_jwt(token: str) -> ApiKey | None:
        try:
            return authenticate_access_key_token(token)
        except jwt.ExpiredSignatureError:
            raise AuthenticationFailed("Token has expired", code=1004) from None
        except jwt.ImmatureSignatureError:
            raise AuthenticationFailed("Token is not yet valid (nbf)", code=1003) from None
        except jwt.InvalidTokenError:
            raise AuthenticationFailed("Token is invalid", code=1002) from None

    def authenticate_header(self, request) -> str:
        # A WWW-Authenticate value makes DRF answer 401 (not 403) for missing credentials.
        return 'Bearer realm="kling"'

    @staticmethod
    def _touch(api_key: ApiKey) -> None:
        now = timezone.now()
        # At most one write a minute per key: a busy key must not turn reads into writes.
        if api_key.last_used_at is None or (now - api_key.last_used_at).total_seconds() > 60:
            ApiKey.objects.filter(pk=api_key.pk).update(last_used_at=now)
            api_key.last_used_at = now  # the row may be cached: keep it in step
