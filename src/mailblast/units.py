"""Human units used in campaign files: durations ("90s", "10m", "1h30m") and rates ("200/s")."""

from __future__ import annotations

import re

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)")
_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(s|sec|second|m|min|minute|h|hour|d|day)\s*$")
_RATE_SECONDS = {
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "m": 60.0,
    "min": 60.0,
    "minute": 60.0,
    "h": 3600.0,
    "hour": 3600.0,
    "d": 86400.0,
    "day": 86400.0,
}


def parse_duration(text: str | int | float) -> float:
    """Parse a duration such as "30s", "10m", "1h30m" or a bare number of seconds.

    Raises ValueError with the accepted forms when the text is not a duration.
    """
    if isinstance(text, bool):
        raise ValueError(
            f"invalid duration {text!r}: use a number of seconds or '30s', '10m', '2h'"
        )
    if isinstance(text, int | float):
        if text < 0:
            raise ValueError(f"invalid duration {text!r}: must not be negative")
        return float(text)
    compact = text.strip().replace(" ", "")
    position = 0
    total = 0.0
    for match in _DURATION_PART.finditer(compact):
        if match.start() != position:
            break
        total += float(match.group(1)) * _SECONDS[match.group(2)]
        position = match.end()
    if not compact or position != len(compact):
        raise ValueError(
            f"invalid duration {text!r}: use forms like '500ms', '30s', '10m', '2h', '1h30m', '5d'"
        )
    return total


def parse_rate(text: str | int | float) -> float:
    """Parse a rate such as "200/s", "600/m" or "10000/h" into messages per second."""
    if isinstance(text, bool):
        raise ValueError(f"invalid rate {text!r}: use forms like '200/s', '600/m', '10000/h'")
    if isinstance(text, int | float):
        value = float(text)
    else:
        match = _RATE.match(text)
        if not match:
            raise ValueError(f"invalid rate {text!r}: use forms like '200/s', '600/m', '10000/h'")
        value = float(match.group(1)) / _RATE_SECONDS[match.group(2)]
    if value <= 0:
        raise ValueError(f"invalid rate {text!r}: must be greater than zero")
    return value


def format_duration(seconds: float) -> str:
    """Format seconds as a short human duration ("1h02m", "3m05s", "12.3s")."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s"
