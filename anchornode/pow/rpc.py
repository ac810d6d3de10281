"""JSON-RPC to a PoW node (Bitcoin Core or Litecoin Core) via python-bitcoinlib.

RawProxy is used with an explicit URL (never ~/.bitcoin/bitcoin.conf) so the
appliance host and tests cannot pick up some other node's credentials by accident.

Two kinds of failure are kept apart, because a caller with several PoW nodes must
try the next one on the first kind and must not on the second:
- the node is *unavailable*: unreachable, an HTTP reply that is not JSON-RPC
  (401 after a restart rotated its cookie, 503 work queue full: python-bitcoinlib
  reports those as code -342), or still warming up (-28). `RpcError.unavailable`.
- the node *answered* with a JSON-RPC error about the call itself (code set).
A node whose credentials come from a cookie file has the file re-read when it
answers 401, since a restarted node writes a new cookie.
"""

from __future__ import annotations

import http.client
import logging
import threading
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlparse, urlunparse

from bitcoin.rpc import JSONRPCError, RawProxy

log = logging.getLogger("bft_anchor.pow")

COIN = 100_000_000
NON_JSON_REPLY = -342  # python-bitcoinlib: the HTTP reply was not JSON (401, 503, ...)
WARMING_UP = -28  # Core: RPC_IN_WARMUP
UNAVAILABLE_CODES = {NON_JSON_REPLY, -343, -344, WARMING_UP}


class RpcError(Exception):
    """The node answered with an error, or could not be used at all.

    code is the JSON-RPC error code when the node answered about the call itself, and
    None when it is unavailable (unreachable, not JSON-RPC, warming up); then
    `unavailable` is True and a caller should try its next PoW node.
    """

    def __init__(self, message: str, code: int | None = None, unavailable: bool = False) -> None:
        super().__init__(message)
        self.code = None if unavailable else code
        self.unavailable = unavailable or code is None


def url_with_auth(
    url: str, user: str | None = None, password: str | None = None, cookie_file: Path | None = None
) -> str:
    """Put credentials into an http URL, from user/password or a node's .cookie file."""
    parsed = urlparse(url if "://" in url else f"http://{url}")
    if cookie_file is not None:
        user, password = read_cookie(Path(cookie_file))
    if user is None:
        return urlunparse(parsed)
    host = parsed.hostname or "127.0.0.1"
    netloc = f"{quote(user, safe='')}:{quote(password or '', safe='')}@{host}"
    if parsed.port:
        netloc += f":{parsed.port}"
    return urlunparse(parsed._replace(netloc=netloc))


def read_cookie(path: Path) -> tuple[str, str]:
    try:
        user, password = Path(path).read_text().strip().split(":", 1)
    except ValueError:
        raise ValueError(f"cookie file {path} is not USER:PASSWORD") from None
    return user, password


def redact(url: str) -> str:
    parsed = urlparse(url)
    if parsed.password is None:
        return url
    host = parsed.hostname or ""
    return urlunparse(parsed._replace(netloc=f"{parsed.username}:***@{host}:{parsed.port}"))


class PowRpc:
    """One node's RPC, reconnecting once when the connection went stale or the cookie changed.

    With cookie_file the credentials are read from it when connecting (the file need
    not exist yet) and again whenever the node answers 401.
    """

    def __init__(self, url: str, timeout: float = 30.0, cookie_file: Path | None = None) -> None:
        self.url = url
        self.timeout = timeout
        self.cookie_file = Path(cookie_file) if cookie_file is not None else None
        self._lock = threading.Lock()
        self._proxy: RawProxy | None = None
        self._cookie_url: str | None = None

    def __repr__(self) -> str:
        return f"PowRpc({redact(self.url)})"

    def wallet(self, name: str) -> PowRpc:
        return self.with_path(f"/wallet/{quote(name)}")

    def with_path(self, path: str) -> PowRpc:
        """Another client (own connection) to the same node, e.g. a wallet's endpoint."""
        parsed = urlparse(self.url)
        return PowRpc(urlunparse(parsed._replace(path=path)), self.timeout, self.cookie_file)

    def _service_url(self) -> str:
        if self.cookie_file is None:
            return self.url
        try:
            return url_with_auth(self.url, cookie_file=self.cookie_file)
        except (OSError, ValueError) as exc:
            raise RpcError(
                f"node {redact(self.url)}: cannot read cookie {self.cookie_file}: {exc}",
                unavailable=True,
            ) from exc

    def call(self, method: str, *args: Any) -> Any:
        with self._lock:
            for attempt in (0, 1):
                try:
                    if self._proxy is None:
                        self._cookie_url = self._service_url()
                        self._proxy = RawProxy(service_url=self._cookie_url, timeout=self.timeout)
                    return getattr(self._proxy, method)(*args)
                except JSONRPCError as exc:
                    err = exc.error if hasattr(exc, "error") else {}
                    code = err.get("code")
                    message = str(err.get("message", exc))
                    if code in UNAVAILABLE_CODES:
                        self._drop()
                        if attempt == 0 and self._may_retry(message):
                            continue
                        raise RpcError(
                            f"{method}: node {redact(self.url)} unavailable: {message}",
                            code,
                            unavailable=True,
                        ) from exc
                    raise RpcError(f"{method}: {message}", code) from exc
                except (OSError, http.client.HTTPException) as exc:
                    self._drop()
                    if attempt:
                        raise RpcError(
                            f"{method}: node {redact(self.url)} unreachable: {exc}",
                            unavailable=True,
                        ) from exc
        raise AssertionError("unreachable")

    def _may_retry(self, message: str) -> bool:
        """Retry once when the cookie file now holds other credentials than we sent."""
        if self.cookie_file is None or "401" not in message:
            return False
        try:
            return self._service_url() != self._cookie_url
        except RpcError:
            return False

    def _drop(self) -> None:
        if self._proxy is not None:
            try:
                self._proxy.close()
            except Exception:  # a half-dead connection must not hide the real error
                pass
            self._proxy = None

    def close(self) -> None:
        """Drop the keep-alive connection (a node's shutdown waits for open ones)."""
        with self._lock:
            self._drop()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return lambda *args: self.call(name, *args)


def first_answer(rpcs: list[PowRpc], method: str, *args: Any) -> Any:
    """The answer of the first PoW node that is available: an unavailable node (down,
    401, 503, warming up) passes the call to the next; an error about the call itself
    is raised at once."""
    errors = []
    for rpc in rpcs:
        try:
            return rpc.call(method, *args)
        except RpcError as exc:
            if not exc.unavailable:
                raise
            errors.append(str(exc))
    raise RpcError("no PoW node answered: " + "; ".join(errors), unavailable=True)


def to_sat(amount: Any) -> int:
    return int((Decimal(str(amount)) * COIN).to_integral_value())


def to_coin(sat: int) -> Decimal:
    return (Decimal(sat) / COIN).quantize(Decimal("0.00000001"))
