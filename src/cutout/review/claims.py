"""Claims: opening an item reserves it for one reviewer for a while, so two people never repaint it at once.

Claims live in the review server's memory: one server serves one feedback store. They spare people
wasted work; they are not what keeps a decision from being overwritten. That is the store itself: an
action needs the item still pending at the version the reviewer opened, so of two racing actions the
second finds the item gone or changed and is refused.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

DEFAULT_CLAIM_SECONDS = 600.0


@dataclass(frozen=True)
class Claim:
    """Who holds an item, and until when (in the clock's seconds)."""

    reviewer: str
    expires: float

    def remaining(self, now: float) -> float:
        """Seconds left, never negative."""
        return max(0.0, self.expires - now)


class ClaimConflict(Exception):
    """Another reviewer holds the item; the message says who and for how long."""


class Claims:
    """Claims per item id, each lasting `seconds` from its last renewal; safe to use from many threads.

    Args:
        seconds: how long an opened item stays reserved for its reviewer.
        clock: the time source (tests pass a fake one).
    """

    def __init__(self, seconds: float = DEFAULT_CLAIM_SECONDS, clock: Callable[[], float] = time.time):
        if seconds <= 0:
            raise ValueError(f"claim seconds must be positive, got {seconds}")
        self.seconds = seconds
        self.clock = clock
        self._claims: dict[str, Claim] = {}
        self._lock = threading.Lock()

    def holder(self, item_id: str) -> Claim | None:
        """The item's live claim, or None when nobody holds it."""
        with self._lock:
            return self._live(item_id, self.clock())

    def claim(self, item_id: str, reviewer: str) -> Claim:
        """Claim (or renew) the item for `reviewer`; if another holds it, return their claim unchanged."""
        now = self.clock()
        with self._lock:
            self._forget_expired(now)
            current = self._claims.get(item_id)
            if current is not None and current.reviewer != reviewer:
                return current
            self._claims[item_id] = Claim(reviewer, now + self.seconds)
            return self._claims[item_id]

    def check(self, item_id: str, reviewer: str) -> None:
        """Raise ClaimConflict if another reviewer holds the item; an unclaimed item is free to act on."""
        now = self.clock()
        with self._lock:
            current = self._live(item_id, now)
        if current is not None and current.reviewer != reviewer:
            minutes = max(1, round(current.remaining(now) / 60))
            raise ClaimConflict(f"item {item_id} is being reviewed by {current.reviewer} "
                                f"(claimed for about {minutes} more min); pick another item")  # fmt: skip

    def release(self, item_id: str, reviewer: str | None = None) -> None:
        """Drop the item's claim (only `reviewer`'s, when given)."""
        with self._lock:
            current = self._claims.get(item_id)
            if current is not None and (reviewer is None or current.reviewer == reviewer):
                del self._claims[item_id]

    def _live(self, item_id: str, now: float) -> Claim | None:
        current = self._claims.get(item_id)
        return current if current is not None and current.expires > now else None

    def _forget_expired(self, now: float) -> None:
        # On every claim: the dict stays as small as the number of items people have open.
        for item_id in [key for key, claim in self._claims.items() if claim.expires <= now]:
            del self._claims[item_id]
