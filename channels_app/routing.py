"""Which channel serves a request, and what an upstream answer says about the channel."""

import random
from dataclasses import dataclass

from .client import UpstreamResponse
from .models import Channel

# Kling codes that describe the channel's own Kling account (see docs/kling-protocol.md).
ACCOUNT_UNUSABLE_CODES = {1000, 1001, 1002, 1003, 1004, 1100, 1101, 1102, 1304}
# Not this account's fault for good, but this request cannot be served by it: try another.
TRY_ANOTHER_CHANNEL_CODES = {1103, 1302, 1303, 5000, 5001, 5002}


@dataclass(frozen=True)
class ChannelFault:
    """An upstream answer that is the channel's problem, not the consumer's."""

    reason: str
    disable_channel: bool
    transient: bool


def candidate_channels(model_name: str) -> list[Channel]:
    """Enabled channels serving the model: highest priority first, weighted random within."""
    channels = [
        c for c in Channel.objects.filter(status=Channel.Status.ENABLED) if c.serves(model_name)
    ]

    def sort_key(channel: Channel) -> tuple[int, float]:
        # Efraimidis–Spirakis weighted shuffle: a larger weight tends to come first;
        # weight 0 channels come last in their group (fallback only).
        draw = random.random() ** (1.0 / channel.weight) if channel.weight else -1.0  # noqa: S311
        return (-channel.priority, -draw)

    return sorted(channels, key=sort_key)


def classify_upstream_answer(response: UpstreamResponse) -> ChannelFault | None:
    """None when the answer is final for the consumer (accepted, or the consumer's error)."""
    code = response.code
    if code in ACCOUNT_UNUSABLE_CODES:
        return ChannelFault(
            f"Kling answered HTTP {response.status} code {code}: {response.message}"[:500],
            disable_channel=True,
            transient=False,
        )
    if code in TRY_ANOTHER_CHANNEL_CODES or response.status >= 500 or response.status == 429:
        return ChannelFault(
            f"Kling answered HTTP {response.status} code {code}: {response.message}"[:500],
            disable_channel=False,
            transient=True,
        )
    if response.ok and isinstance(response.data, dict) and not response.data.get("task_id"):
        return ChannelFault(
            "Kling answered success without a task_id", disable_channel=False, transient=True
        )
    if response.status == 200 and not response.ok:
        return ChannelFault(
            "Kling answered HTTP 200 without a usable body", disable_channel=False, transient=True
        )
    if response.payload is None:
        return ChannelFault(
            f"Kling answered HTTP {response.status} with a body that is not Kling JSON",
            disable_channel=False,
            transient=True,
        )
    return None
