"""Operator actions on channels."""

from dataclasses import dataclass

from .client import UpstreamUnavailable, send_to_kling
from .models import Channel

# Listing one task costs nothing at Kling but proves the host, the keys and the account.
TEST_PATH = "/v1/videos/text2video"


@dataclass(frozen=True)
class ChannelTestResult:
    ok: bool
    detail: str


def test_channel(channel: Channel, *, enable_on_success: bool = True) -> ChannelTestResult:
    """Call Kling with every key of the channel; re-enable it if all of them work."""
    failures: list[str] = []
    for number, credential in enumerate(channel.credentials(), start=1):
        try:
            response = send_to_kling(
                channel,
                "GET",
                TEST_PATH,
                params={"pageNum": 1, "pageSize": 1},
                credential=credential,
            )
        except UpstreamUnavailable as error:
            failures.append(f"key {number}: Kling unreachable ({error})")
            continue
        if not response.ok:
            failures.append(
                f"key {number}: HTTP {response.status} code {response.code} {response.message}"
            )
    if failures:
        return ChannelTestResult(False, "; ".join(failures)[:1000])
    if enable_on_success and not channel.is_enabled:
        channel.enable()
    return ChannelTestResult(True, f"{len(channel.credentials())} key(s) answered")
