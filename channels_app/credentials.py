"""Kling account credentials: parsing a channel's `AK|SK` lines and signing Kling JWTs.

This module is the one place that knows how a Kling token is made. Tokens are cached per
access key and reused until shortly before they expire, as Kling's own clients do.
"""

import hashlib
import threading
import time
from dataclasses import dataclass

import jwt
from django.conf import settings
from django.core.exceptions import ValidationError


@dataclass(frozen=True)
class KlingCredential:
    access_key: str
    secret_key: str = ""

    def __repr__(self) -> str:  # never let a secret reach a log line or a traceback
        return f"KlingCredential(access_key={mask_secret(self.access_key)!r})"


def mask_secret(value: str, visible: int = 4) -> str:
    """Show only the first characters of a secret, enough to tell keys apart."""
    if not value:
        return ""
    if len(value) <= visible * 2:
        return value[:1] + "…"
    return f"{value[:visible]}…{value[-2:]}"


def parse_channel_keys(text: str) -> list[KlingCredential]:
    """Parse a channel key field: one `AK|SK` per line; blank lines are ignored.

    Raises ValidationError naming the offending line (by number, never by content).
    """
    credentials: list[KlingCredential] = []
    errors: list[str] = []
    for number, raw_line in enumerate((text or "").splitlines(), start=1):
        line = raw_line.strip()
        if not line:
            continue
        if line.count("|") != 1:
            errors.append(
                f"Line {number}: expected exactly one '|' between access key and secret key "
                "(format AK|SK)."
            )
            continue
        access_key, secret_key = (part.strip() for part in line.split("|"))
        if not access_key:
            errors.append(f"Line {number}: the access key (before '|') is empty.")
        if not secret_key:
            errors.append(f"Line {number}: the secret key (after '|') is empty.")
        if access_key and secret_key:
            credentials.append(KlingCredential(access_key, secret_key))
    if errors:
        raise ValidationError(errors)
    if not credentials:
        raise ValidationError("Enter at least one key as AK|SK (one per line).")
    return credentials


def encode_kling_token(credential: KlingCredential, now: float | None = None) -> str:
    """A fresh Kling JWT: HS256, iss = access key, exp = now + TTL, nbf = now - 5 s."""
    issued = int(now if now is not None else time.time())
    claims = {
        "iss": credential.access_key,
        "exp": issued + settings.KLING_TOKEN_TTL,
        "nbf": issued - 5,
    }
    return jwt.encode(claims, credential.secret_key, algorithm="HS256", headers={"typ": "JWT"})


_token_cache: dict[str, tuple[str, float]] = {}
_token_cache_lock = threading.Lock()


def kling_token(credential: KlingCredential) -> str:
    """The bearer token for a credential, reused until KLING_TOKEN_RENEW_BEFORE of expiry."""
    # The cache key covers the secret too, so editing a channel's SK takes effect at once.
    cache_key = hashlib.sha256(
        f"{credential.access_key}|{credential.secret_key}".encode()
    ).hexdigest()
    now = time.time()
    with _token_cache_lock:
        cached = _token_cache.get(cache_key)
        if cached and cached[1] - settings.KLING_TOKEN_RENEW_BEFORE > now:
            return cached[0]
        token = encode_kling_token(credential, now)
        _token_cache[cache_key] = (token, int(now) + settings.KLING_TOKEN_TTL)
        return token
