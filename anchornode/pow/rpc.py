"""JSON-RPC to a PoW node (Bitcoin Core or Litecoin Core) via python-bitcoinlib.

RawProxy is used with an explicit URL (never ~/.bitcoin/bitcoin.conf) so the
appliance host and tests cannot pick up some other node's credentials by accident.
"""

from __future__ import annotations

import http.client
import threading
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlparse, urlunparse

from bitcoin.rpc import JSONRPCError, RawProxy

COIN = 100_000_000


class RpcError(Exception):
    """The node answered with an error, or could not be reached; code is the RPC code."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


def url_with_auth(
    url: str, user: str | None = None, password: str | None = None, cookie_file: Path | None = None
) -> str:
    """Put credentials into an http URL, from user/password or a node's .cookie file."""
    parsed = urlparse(url if "://" in url else f"http://{url}")
    if cookie_file is not None:
        user, password = Path(cookie_file).read_text().strip().split(":", 1)
    if user is None:
        return urlunparse(parsed)
    host = parsed.hostname or "127.0.0.1"
    netloc = f"{quote(user, safe='')}:{quote(password or '', safe='')}@{host}"
    if parsed.port:
        netloc += f":{parsed.port}"
    return urlunparse(parsed._replace(netloc=netloc))


def redact(url: str) -> str:
    parsed = urlparse(url)
    if parsed.password is None:
        return url
    host = parsed.hostname or ""
    return urlunparse(parsed._replace(netloc=f"{parsed.username}:***@{host}:{parsed.port}"))


class PowRpc:
    """One node's RPC, reconnecting once when the HTTP connection has gone stale."""

    def __init__(self, url: str, timeout: float = 30.0) -> None:
        self.url = url
        self.timeout = timeout
        self._lock = threading.Lock()
        self._proxy: RawProxy | None = None

    def __repr__(self) -> str:
        return f"PowRpc({redact(self.url)})"

    def wallet(self, name: str) -> PowRpc:
        parsed = urlparse(self.url)
        return PowRpc(urlunparse(parsed._replace(path=f"/wallet/{quote(name)}")), self.timeout)

    def call(self, method: str, *args: Any) -> Any:
        with self._lock:
            for attempt in (0, 1):
                try:
                    if self._proxy is None:
                        self._proxy = RawProxy(service_url=self.url, timeout=self.timeout)
                    return self._proxy._call(method, *args)
                except JSONRPCError as exc:
                    err = exc.error if hasattr(exc, "error") else {}
                    raise RpcError(f"{method}: {err.get('message', exc)}", err.get("code")) from exc
                except (OSError, http.client.HTTPException) as exc:
                    self._proxy = None
                    if attempt:
                        raise RpcError(
                            f"{method}: node {redact(self.url)} unreachable: {exc}"
                        ) from exc
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Drop the keep-alive connection (a node's shutdown waits for open ones)."""
        with self._lock:
            if self._proxy is not None:
                self._proxy.close()
                self._proxy = None

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return lambda *args: self.call(name, *args)


def to_sat(amount: Any) -> int:
    return int((Decimal(str(amount)) * COIN).to_integral_value())


def to_coin(sat: int) -> Decimal:
    return (Decimal(sat) / COIN).quantize(Decimal("0.00000001"))
