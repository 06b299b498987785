"""The API's times: ISO 8601 UTC with a Z to the second, the same however they are made."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from downstream_node.domain.clock import from_micros, iso_micros, parse_time, to_micros

# From the epoch to the year 9999, in microseconds.
MICROS = st.integers(min_value=0, max_value=253_402_300_799_999_999)


@given(MICROS)
def test_iso_from_microseconds_is_the_datetimes_iso(micros: int) -> None:
    text = iso_micros(micros)
    assert text == from_micros(micros).strftime("%Y-%m-%dT%H:%M:%SZ")  # the datetime's text
    # Read back, it is the same instant cut to the second.
    assert to_micros(parse_time(text)) == micros - micros % 1_000_000
