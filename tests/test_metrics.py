"""The node's /metrics and /status: bounded labels, counts once, no port a stranger can hold."""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request

import pytest

from anchornode.metrics import Metrics, refusal_kind, serve_metrics


def test_confirmed_counts_each_checkpoint_once_and_no_txid_label():
    m = Metrics("v0")
    for _ in range(3):  # a rescan, then a reorg that confirms the same transactions again
        m.confirmed(110, time.time(), "aa" * 32, ["v0", "v1", "v2"])
        m.confirmed(112, time.time(), "bb" * 32, ["v1", "v2", "v3"])
    assert m.value("bft_anchor_checkpoints_confirmed_total") == 2
    assert m.value("bft_anchor_checkpoints_signed_total", signer="v1") == 2
    assert m.value("bft_anchor_checkpoints_signed_total", signer="v0") == 1
    assert m.value("bft_anchor_last_checkpoint_signed", signer="v0") == 0
    assert m.value("bft_anchor_last_checkpoint_signed", signer="v3") == 1
    text = m.render()
    assert "txid" not in text and "aa" * 32 not in text


def test_refusal_reasons_fall_into_a_fixed_set():
    m = Metrics("v0")
    junk = [f"peer says {i}: " + "x" * i for i in range(500)]
    for r in junk + ["QC does not verify: bad sig", "replayed message from v1", ""]:
        m.refusal(r)
    kinds = {line.split('reason="')[1].split('"')[0]
             for line in m.render().splitlines() if line.startswith("bft_anchor_refusals_total{")}
    assert kinds == {"other", "qc", "replay"}
    assert refusal_kind("attempt 5 is superseded by attempt 7") == "attempt"


@pytest.fixture
def server():
    m = Metrics("v0")
    srv = serve_metrics(m, lambda: {"validator": "v0"}, "127.0.0.1", 0, lifetime=1.0)
    yield srv
    srv.shutdown()
    srv.server_close()


def get(port: int, path: str, headers: dict | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""


def test_idle_connections_are_closed_and_capped(server):
    port = server.server_address[1]
    many = server.max_connections * 3
    idle = []
    for i in range(many):
        idle.append(socket.create_connection(("127.0.0.1", port)))
        if i % 16 == 15:  # let the accept loop keep up: a full backlog drops SYNs for 1 s
            time.sleep(0.005)
    try:
        # Over the cap: closed at accept. Under it: closed by the read timeout / lifetime.
        deadline = time.monotonic() + server.lifetime + 5
        while server.open_connections and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.open_connections == 0
        for s in idle:
            s.settimeout(2)
            assert s.recv(1) == b""  # the server hung up
        status, body = get(port, "/metrics")
        assert status == 200 and b"bft_anchor_checkpoints_confirmed_total" in body
    finally:
        for s in idle:
            s.close()


def test_slow_drip_is_cut_at_the_lifetime(server):
    port = server.server_address[1]
    s = socket.create_connection(("127.0.0.1", port))
    start = time.monotonic()
    try:
        # One byte every quarter second: each read succeeds well inside the per-read
        # timeout (= lifetime), so only the lifetime can cut it; uncut, the loop outlasts
        # lifetime + 5 s and the assertion below fails.
        s.settimeout(0.25)
        for _ in range(int((server.lifetime + 6) / 0.25)):
            try:
                s.sendall(b"G")
                if s.recv(1) == b"":
                    break
            except TimeoutError:
                continue
            except OSError:
                break
        assert time.monotonic() - start < server.lifetime + 5
    finally:
        s.close()


def test_status_needs_loopback_or_token():
    m = Metrics("v0")
    srv = serve_metrics(m, lambda: {"validator": "v0"}, "127.0.0.1", 0, status_token="s3cret")
    port = srv.server_address[1]
    try:
        assert get(port, "/status")[0] == 403
        assert get(port, "/status", {"Authorization": "Bearer wrong"})[0] == 403
        status, body = get(port, "/status", {"Authorization": "Bearer s3cret"})
        assert status == 200 and b'"v0"' in body
        assert get(port, "/metrics")[0] == 200
    finally:
        srv.shutdown()
        srv.server_close()


def test_a_request_larger_than_the_cap_is_cut_off(server):
    port = server.server_address[1]
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /metrics HTTP/1.0\r\n")
        sent = 0
        try:
            for i in range(100):
                s.sendall(f"X-{i}: ".encode() + b"a" * 60_000 + b"\r\n")
                sent += 60_000
        except OSError:
            pass  # the server hung up: it read no more than its cap
        s.settimeout(5)
        try:
            reply = s.recv(65536)
        except OSError:
            reply = b""
    assert not reply.startswith(b"HTTP/1.0 200")
    status, _ = get(port, "/metrics")
    assert status == 200
