"""The node's farmers' API over HTTP: one request at a time, JSON in and out, the node's
refusals as ``FarmerError`` and its ``Retry-After`` waited out before the next request.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import json
from typing import Any

import aiohttp

from ..domain.clock import Clock
from ..domain.tokens import redact_hex_runs

PREFIX = "/api/downstream"
MAX_RETRY_AFTER = 300.0  # seconds: a node's Retry-After beyond this is not waited out in full


class FarmerError(Exception):
    """The node refused a request (or answered something that is not the API)."""

    def __init__(
        self, status: str, message: str, http_status: int, retry_after: float | None = None
    ) -> None:
        text = f"{http_status} {status}: {message}"
        if retry_after is not None:
            text += f" (retry after {retry_after:g} s)"
        super().__init__(text)
        self.status = status
        self.message = message
        self.http_status = http_status
        self.retry_after = retry_after


class CannotStore(FarmerError):
    """A contract's chunk could not be written (not derivable from its seed, or the disk
    refused it: ``local``); the contract was handed back."""

    def __init__(self, file_hash: str, reason: str, *, local: bool = False) -> None:
        super().__init__("cannot_store", reason, 0)
        self.file_hash = file_hash
        self.local = local


def describe_error(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def retry_after(value: str | None, now: dt.datetime) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (seconds or an HTTP date), bounded."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
        seconds = (when - now).total_seconds()
    if seconds != seconds:  # NaN
        return None
    return max(0.0, min(seconds, MAX_RETRY_AFTER))


class NodeClient:
    """Requests to one node, on a shared session or (when none is given) one of its own."""

    def __init__(
        self,
        url: str,
        *,
        clock: Clock,
        session: aiohttp.ClientSession | None = None,
        timeout: float = 60.0,
    ) -> None:
        self.url = url
        self.clock = clock
        self._session = session
        self._own_session = session is None
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._not_before: dt.datetime | None = None  # from the node's last Retry-After

    async def close(self) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self._session

    async def request(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        """One API call: the JSON object on success, ``FarmerError`` on an error status.

        Waits out the node's last ``Retry-After`` first (cancel the caller to stop waiting).
        """
        if self._not_before is not None:
            wait = (self._not_before - self.clock.now()).total_seconds()
            if wait > 0:
                await asyncio.sleep(wait)
            self._not_before = None
        kwargs: dict[str, Any] = {} if body is None else {"json": body}
        try:
            # Never follow a redirect: the token is in the path, and a redirect may lead
            # anywhere (the node's API does not redirect).
            async with self._http().request(
                method, self.url + path, timeout=self._timeout, allow_redirects=False, **kwargs
            ) as response:
                text = await response.text()
                after = retry_after(response.headers.get("Retry-After"), self.clock.now())
        except TimeoutError as exc:
            # aiohttp's timeout carries no message: the user saw "cannot reach ...: ".
            raise TimeoutError(f"timed out after {self._timeout.total:g} s") from exc
        if response.status >= 400 and after is not None:
            self._not_before = self.clock.now() + dt.timedelta(seconds=after)
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        # A page that is not the API's is quoted with any token in it cut short (a proxy's
        # error page may echo the request's path, which holds the token).
        if 300 <= response.status < 400:
            where = redact_hex_runs(response.headers.get("Location", "")[:200])
            raise FarmerError("redirect", f"redirected to {where!r}; not followed", response.status)
        if not isinstance(data, dict):
            excerpt = redact_hex_runs(text[:200])
            raise FarmerError("error", f"not a JSON object: {excerpt!r}", response.status, after)
        if response.status >= 400:
            raise FarmerError(
                str(data.get("status", "error")),
                str(data.get("message", "")),
                response.status,
                after,
            )
        return data
