"""When a deferred message is tried again.

The delay before attempt ``n + 1`` (``n`` >= 1 attempts made so far) is::

    base(n)  = min(maximum, initial * factor ** (n - 1))
    delay(n) = base(n) * uniform(1 - jitter, 1 + jitter)

With the defaults (1 minute, doubling, capped at 1 hour, 20 % jitter) the retries fall at about
1, 2, 4, 8, 16, 32 and then every 60 minutes. Greylisting relays usually accept a retry after 1
to 15 minutes, so the second or third attempt gets through. A message older than ``max_age``
or past ``max_attempts`` attempts expires instead of being retried.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from mailblast.config import SendingSettings


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter, bounded by a maximum age and a maximum attempt count."""

    initial: float = 60.0
    factor: float = 2.0
    maximum: float = 3600.0
    jitter: float = 0.2
    max_age: float = 5 * 86400.0
    max_attempts: int = 30

    @classmethod
    def from_settings(cls, sending: SendingSettings) -> RetryPolicy:
        return cls(
            initial=sending.retry_initial,
            factor=sending.retry_factor,
            maximum=sending.retry_max,
            max_age=sending.max_age,
            max_attempts=sending.max_attempts,
        )

    def base_delay(self, attempts: int) -> float:
        """Return the delay without jitter after ``attempts`` attempts (1 or more)."""
        exponent = max(0, attempts - 1)
        if self.factor > 1 and exponent > 64:
            return self.maximum
        return float(min(self.maximum, self.initial * self.factor**exponent))

    def delay(self, attempts: int, rng: random.Random | None = None) -> float:
        """Return the jittered delay before the next attempt."""
        spread = (rng or random).uniform(1 - self.jitter, 1 + self.jitter)
        return self.base_delay(attempts) * spread

    def next_attempt(
        self, attempts: int, first_attempt_at: float, now: float, rng: random.Random | None = None
    ) -> float | None:
        """Return when to try again, or None when the message has expired."""
        if attempts >= self.max_attempts:
            return None
        due = now + self.delay(attempts, rng)
        if due - first_attempt_at > self.max_age:
            return None
        return due
