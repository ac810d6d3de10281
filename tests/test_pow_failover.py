"""A PoW node that restarts or turns away requests must not stop the node (issue 12
item 2): its new cookie is read again, and 401, 503 and unreachable pass the call to
the next PoW node, while a real JSON-RPC error about the call does not."""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from anchornode.pow.rpc import PowRpc, RpcError, first_answer


class FakeCore:
    """Answers JSON-RPC like Core: 401 without the current password, 503 when busy."""

    def __init__(self) -> None:
        self.password = "one"
        self.busy = False
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                auth = self.headers.get("Authorization", "")
                good = "Basic " + base64.b64encode(f"__cookie__:{fake.password}".encode()).decode()
                if auth != good:
                    self.send_response(401)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if fake.busy:
                    text = b"Work queue depth exceeded"
                    self.send_response(503)
                    self.send_header("Content-Length", str(len(text)))
                    self.end_headers()
                    self.wfile.write(text)
                    return
                req = json.loads(body)
                if req["method"] == "getblockcount":
                    reply = {"result": 7, "error": None, "id": req["id"]}
                else:
                    reply = {"result": None, "id": req["id"],
                             "error": {"code": -32601, "message": "Method not found"}}
                out = json.dumps(reply).encode()
                self.send_response(200 if reply["error"] is None else 500)
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        # A short poll: shutdown() waits for it, once per test.
        threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Healthy:
    def call(self, method: str, *args):
        return 42


@pytest.fixture
def core(tmp_path):
    c = FakeCore()
    cookie = tmp_path / ".cookie"
    cookie.write_text("__cookie__:one")
    yield c, cookie
    c.close()


def test_a_restarted_node_is_used_again_with_its_new_cookie(core):
    c, cookie = core
    rpc = PowRpc(c.url, cookie_file=cookie)
    assert rpc.getblockcount() == 7
    c.password = "two"  # the node restarted: a new cookie
    cookie.write_text("__cookie__:two")
    assert rpc.getblockcount() == 7


@pytest.mark.parametrize("fault", ["401", "503", "down"])
def test_any_failure_of_one_node_falls_through_to_the_next(core, fault):
    c, cookie = core
    rpc = PowRpc(c.url, cookie_file=cookie, timeout=2)
    if fault == "401":
        c.password = "rotated"  # and the cookie file still holds the old one
    elif fault == "503":
        c.busy = True
    else:
        c.close()
    with pytest.raises(RpcError) as err:
        rpc.getblockcount()
    assert err.value.unavailable and err.value.code is None
    assert first_answer([rpc, Healthy()], "getblockcount") == 42


def test_an_error_about_the_call_is_not_a_node_failure(core):
    c, cookie = core
    rpc = PowRpc(c.url, cookie_file=cookie)
    with pytest.raises(RpcError) as err:
        first_answer([rpc, Healthy()], "nosuchmethod")
    assert err.value.code == -32601 and not err.value.unavailable


def test_a_missing_cookie_is_unavailable_until_it_appears(core, tmp_path):
    c, cookie = core
    later = tmp_path / "later" / ".cookie"
    rpc = PowRpc(c.url, cookie_file=later)
    with pytest.raises(RpcError) as err:
        rpc.getblockcount()
    assert err.value.unavailable
    later.parent.mkdir()
    later.write_text("__cookie__:one")
    assert rpc.getblockcount() == 7
