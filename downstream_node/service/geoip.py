"""Where a farmer is, from the operator's MaxMind database (``serve --geoip FILE``): the v1
status routes' ``location``. A local file read with the ``maxminddb`` reader, never a network
lookup; without a database every location is null.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

from ..domain.errors import Refused


class GeoIP:
    """A GeoLite2-City-shaped database (or any MaxMind DB with the same keys), opened once."""

    def __init__(self, path: Path) -> None:
        try:
            # Imported here: only a node given a database needs the reader.
            import maxminddb

            self.reader = maxminddb.open_database(str(path))
        except ImportError:
            raise Refused("bad_geoip", "--geoip needs the maxminddb package") from None
        except (OSError, ValueError, RuntimeError) as exc:  # InvalidDatabaseError: Runtime
            raise Refused("bad_geoip", f"cannot read the GeoIP database {path}: {exc}") from None

    def close(self) -> None:
        self.reader.close()

    def locate(self, ip: str | None) -> dict[str, Any] | None:
        """``{country, state, city, zip, lat, lon}`` (English names, missing parts null) for
        ``ip``; None when it is no address or the database does not know it."""
        if not ip:
            return None
        try:
            found = self.reader.get(ipaddress.ip_address(ip))
        except ValueError:  # not an address, or IPv6 in an IPv4-only database
            return None
        if not isinstance(found, dict):
            return None
        subdivisions = found.get("subdivisions") or [{}]
        location = found.get("location") or {}
        return {
            "country": _name(found.get("country")),
            "state": _name(subdivisions[0]),
            "city": _name(found.get("city")),
            "zip": (found.get("postal") or {}).get("code"),
            "lat": location.get("latitude"),
            "lon": location.get("longitude"),
        }


def _name(part: Any) -> str | None:
    if not isinstance(part, dict):
        return None
    names = part.get("names")
    return names.get("en") if isinstance(names, dict) else None
