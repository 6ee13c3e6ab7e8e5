"""Mercado Livre's dates, read the one way every flow reads them."""

from __future__ import annotations

from datetime import datetime, timezone


def parse_date(value) -> float | None:
    """Mercado Livre's ISO dates as epoch seconds; None when unusable."""
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).timestamp()
