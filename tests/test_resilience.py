"""The online side keeps checkpointing through faults and hostile peers (issue 12).

One module-scoped cluster of real processes: four validators (node + appliance
over a pty each), two litecoind (or bitcoind) regtest nodes, a simulated BFT chain.
The chain starts just below Litecoin's MWEB activation height (432), so the run
also shows the launcher's peg-in and a chain past block 500. Every test puts the
world back as it found it (processes restarted, mining on), so none depends on
another's leftovers; each measures how soon checkpoints resume after its fault.
"""

from __future__ import annotations

import json
import os
import random
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from anchornode.cluster import Cluster, ClusterOptions
from anchornode.peer_protocol import exchange, seal, unverified
from anchornode.pow.follow import CoinFollower, confirmed_height
from anchornode.pow.regtest import MiningError, RegtestNode
from bftanchor.descriptor import EpochMultisig
from bftanchor.payload import Payload
from bftanchor.template import Coin, Outpoint, build_checkpoint_psbt

pytestmark = [pytest.mark.integration, pytest.mark.slow]

OPTS = ClusterOptions(
    validators=4,
    epochs=1,
    rounds_per_epoch=4000,
    round_interval=0.25,
    block_interval=1.0,
    interval_blocks=2,
    handover_margin=10,
    initiator_timeout=5.0,
    start_height=428,  # Litecoin regtest: MWEB activates at 432, a peg-in must be made
)
# After a fault: initiator_timeout plus two blocks, and what polling adds (the nodes'
# 0.25 s, ours 0.25 s, a block's propagation) with room for a loaded 2-core machine.
RESUME = OPTS.initiator_timeout + 2 * OPTS.block_interval + 4.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    # Started from a relative directory, as `bft-anchor devnet --nodes --datadir dn` does
    # (issue 12 item 8: the nodes' cookie paths must still resolve).
    base = tmp_path_factory.mktemp("resilience")
    cwd = os.getcwd()
    os.chdir(base.parent)
    try:
        c = Cluster(Path(base.name), OPTS).start()
    finally:
        os.chdir(cwd)
    yield c
    c.stop()


class Watch:
    """The confirmed checkpoints, followed incrementally on whichever PoW node runs."""

    def __init__(self, c: Cluster) -> None:
        self.c = c
        self.follower: CoinFollower | None = None

    def spends(self) -> list:
        rpc = self.c.rpc()
        if self.follower is None or self.follower.rpc is not rpc:
            assert self.c.genesis is not None
            start = confirmed_height(rpc, self.c.genesis.outpoint.txid)
            self.follower = CoinFollower(rpc, self.c.genesis.outpoint, start)
        self.follower.poll()
        return list(self.follower.spends)

    def count(self) -> int:
        return len(self.spends())

    def wait_more(self, n: int, timeout: float, what: str = "") -> float:
        """Seconds until n more checkpoints have confirmed."""
        base, t0 = self.count(), time.monotonic()
        self.c.wait_for(lambda: self.count() >= base + n, timeout,
                        f"{n} more checkpoint(s) {what}".strip())
        return time.monotonic() - t0


@pytest.fixture(scope="module")
def watch(cluster):
    return Watch(cluster)


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def coin_now(c: Cluster, watch: Watch) -> tuple[int, Coin]:
    spends = watch.spends()
    if not spends:
        return 0, c.genesis
    last = spends[-1]
    return len(spends), Coin(Outpoint(last.txid, 1), last.tx.vout[1].value, 0)


def test_one_validator_cannot_halt_the_network_with_an_absurd_attempt(cluster, watch):
    """Item 1: a signed proposal with an absurd attempt and no PSBTs was stored as the
    accepted attempt, and every honest proposal after it was refused as superseded."""
    c = cluster
    watch.wait_more(1, 60, "before the fault")
    assert "cookie = \"/" in (c.member("v0").dir / "node.toml").read_text()  # absolute
    for m in c.members:  # secrets written owner-only from the start
        for name in ("seed.txt", "bft.key"):
            assert (m.dir / name).stat().st_mode & 0o077 == 0
    liar = c.member("v3")
    rec = c.records[0]
    n = rec.n
    seq, coin = coin_now(c, watch)
    absurd = ((rec.index_of("v3") - seq) % n) + n * 10**9  # an attempt v3 would initiate
    qc = c.sim.qc(0, c.round)
    ms = EpochMultisig(rec)
    payload = Payload(qc.epoch, qc.round, qc.commit_state_id)
    good = build_checkpoint_psbt(coin, ms, payload, ms, 1000)
    base = {"seq": seq, "attempt": absurd, "qc": qc.to_json(), "records": [rec.to_json()],
            "lineage": []}
    for m in c.members:
        if m is liar:
            continue
        for body in (dict(base, psbts=[]), dict(base, psbts=[good.to_string()])):
            reply = unverified(exchange("127.0.0.1", m.port,
                                        seal("propose", "v3", 0, body, liar.bft_secret), 10))
            assert reply["type"] == "refuse", reply
    took = watch.wait_more(1, 4 * RESUME, "after the absurd proposals")
    print(f"absurd attempt: next checkpoint {took:.1f} s after the fault (bound {RESUME:.0f})")
    assert took <= RESUME, f"checkpoints resumed {took:.1f} s after the fault"
    assert any("ahead of this node's clock" in c.logs(m.id) for m in c.members if m is not liar)


def _send_and_close(port: int, data: bytes, read: bool = True) -> None:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
            s.sendall(data)
            if read:
                s.recv(65536)
    except OSError:
        pass


def _fuzz_frames(member_secret: bytes) -> list[bytes]:
    def header(text: bytes) -> bytes:
        return struct.pack(">I", len(text)) + text

    deep = b"[" * 50_000 + b"]" * 50_000
    member = seal("ping", "v3", 0, {"pad": "x"}, member_secret)
    return [
        os.urandom(64),
        b"\xff\xff\xff\xff" + os.urandom(512),  # a 4 GiB header announced
        header(b'{"v": 2, "epoch": 1e400, "len": 1e400}'),
        header(b'{"v": Infinity, "len": NaN}'),
        header(b'{"v": 2, "len": ' + b"9" * 5000 + b"}"),
        header(b"[" * 2000 + b"]" * 2000),
        header(b'{"v":2,"type":"propose","from":"v1","epoch":0,"ts_ms":1,"len":1000000,'
               b'"body_sha256":"' + b"00" * 32 + b'","sig":"' + b"00" * 64 + b'"}') + deep,
        member[:-8] + b"Infinity",
        deep,
    ]


def test_socket_fuzz_keeps_checkpoints_and_memory_bounded(cluster, watch):
    """Items 5 and 7: idle and slow connections, garbage, huge numbers, deep nesting and
    oversize bodies on a node's peer and metrics ports, while checkpoints go on."""
    c = cluster
    target = c.member("v0")
    pid = target.node.pid
    stop = threading.Event()
    idle: list[socket.socket] = []
    rss = [rss_mb(pid)]
    frames = _fuzz_frames(c.member("v3").bft_secret)
    http_junk = [
        b"GET /metrics HTTP/1.1\r\n" + b"X-A: " + b"a" * 70_000 + b"\r\n\r\n",
        b"POST /status HTTP/1.0\r\nContent-Length: 99999999999\r\n\r\n" + b"x" * 1000,
        b"GET /" + b"%" * 10_000 + b" HTTP/1.0\r\n\r\n",
        os.urandom(256),
    ]

    def hammer(port: int, payloads: list[bytes]) -> None:
        rnd = random.Random(port)
        while not stop.is_set():
            _send_and_close(port, rnd.choice(payloads))

    def drip(port: int) -> None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                while not stop.wait(0.5):
                    s.sendall(b"\x00")
        except OSError:
            pass

    for _ in range(150):  # idle: the node must close them, not hold them for ever
        for port in (target.port, target.metrics_port):
            try:
                idle.append(socket.create_connection(("127.0.0.1", port), timeout=3))
            except OSError:
                pass
    threads = [threading.Thread(target=hammer, args=(target.port, frames), daemon=True),
               threading.Thread(target=hammer, args=(target.metrics_port, http_junk),
                                daemon=True)]
    threads += [threading.Thread(target=drip, args=(p,), daemon=True)
                for p in (target.port, target.metrics_port) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        t0 = time.monotonic()
        base = watch.count()
        while time.monotonic() - t0 < 60 and watch.count() < base + 3:
            rss.append(rss_mb(pid))
            time.sleep(0.5)
        assert watch.count() >= base + 3, "checkpoints stopped under the fuzz"
    finally:
        stop.set()
        for t in threads:
            t.join(10)
        for s in idle:
            s.close()
    assert target.node.poll() is None
    print(f"fuzz: node RSS {min(rss):.0f}..{max(rss):.0f} MB over {len(rss)} samples")
    assert max(rss) < 100, f"node RSS reached {max(rss):.0f} MB"
    # Still answering, and not holding what it was sent.
    text = urllib.request.urlopen(
        f"http://127.0.0.1:{target.metrics_port}/metrics", timeout=5).read().decode()
    assert 'reason="unauthenticated"' in text
    pong = unverified(exchange("127.0.0.1", target.port,
                               seal("ping", "v1", 0, {}, c.member("v1").bft_secret), 10))
    assert pong["type"] == "pong"
    log = c.logs("v0")
    assert "Traceback" not in log
    assert "similar log line(s) suppressed" in log or log.count("dropped peer message") <= 40


def test_pow_node_restart_new_cookie_and_failover(cluster, watch):
    """Item 2: a restarted PoW node's new cookie is read again, and any failure of one
    PoW node passes the node's calls to the next."""
    c = cluster
    old_cookie = c.pow[0].cookie_file.read_text()
    try:
        c.restart_pow(0)
        assert c.pow[0].cookie_file.read_text() != old_cookie
        c.wait_synced()
        watch.wait_more(1, 60, "after the first PoW node restarted")
        # Now the second goes down: only the restarted node, with its new cookie, is left.
        c.pow[1].stop(keep_datadir=True)
        took = watch.wait_more(2, 4 * RESUME, "with only the restarted PoW node")
        print(f"PoW restart: two checkpoints {took:.1f} s after the other PoW node stopped")
        assert took <= RESUME + 2 * OPTS.interval_blocks * OPTS.block_interval, took
    finally:
        if not c.pow[1].running:
            c.restart_pow(1)
        c.wait_synced()
    assert not any("unexpected error" in c.logs(m.id) for m in c.members)


def test_a_reorg_that_drops_checkpoints_is_restored(cluster, watch):
    """Item 3: a reorganisation takes checkpoints out of the chain; the second and later
    ones are out of every mempool too (their parent is unconfirmed, and the one-block
    relative lock makes them non-final). The nodes send them again from their store."""
    c = cluster
    c.wait_for(lambda: c.rpc().getblockcount() >= 433, 60, "MWEB activation behind us")
    fork = RegtestNode(c.root / "fork").start()
    try:
        fork.connect(c.pow[0])
        c.wait_for(lambda: fork.rpc.getbestblockhash() == c.rpc().getbestblockhash(), 60,
                   "the fork node to sync")
        fork.rpc.setnetworkactive(False)
        split = int(fork.rpc.getblockcount())
        c.wait_for(lambda: sum(s.height > split for s in watch.spends()) >= 2, 60,
                   "two checkpoints after the split")
        c.mining.clear()
        time.sleep(2 * OPTS.block_interval)  # let a block being mined finish
        before = watch.spends()
        dropped = [s.txid for s in before if s.height > split]
        assert len(dropped) >= 2
        height = int(c.rpc().getblockcount())
        fork.mine(height - split + 2, address=c.pow[0].wallet_rpc.getnewaddress())
        fork.rpc.setnetworkactive(True)
        fork.connect(c.pow[0])
        c.wait_for(lambda: c.rpc().getbestblockhash() == fork.rpc.getbestblockhash(), 60,
                   "the cluster's PoW nodes to take the longer chain")
        after_reorg = {s.txid for s in watch.spends()}
        assert not set(dropped) & after_reorg  # really gone from the chain
        mempools = set(c.pow[0].rpc.getrawmempool()) | set(c.pow[1].rpc.getrawmempool())
        assert not set(dropped[1:]) <= mempools  # and the later ones from the mempools
    finally:
        c.mining.set()
    try:
        t0 = time.monotonic()
        c.wait_for(lambda: set(dropped) <= {s.txid for s in watch.spends()}, 8 * RESUME,
                   "the dropped checkpoints to confirm again")
        watch.wait_more(1, 4 * RESUME, "after the reorg")
        took = time.monotonic() - t0
    finally:
        fork.stop()
    # Each dropped checkpoint needs its own block (one-block relative lock), then a new one.
    print(f"reorg: {len(dropped)} dropped checkpoints back and a new one {took:.1f} s after "
          "mining resumed")
    assert took <= RESUME + len(dropped) * OPTS.block_interval, took
    logs = "".join(c.logs(m.id) for m in c.members)
    assert "dropped from the chain (reorganisation): sent it again" in logs
    report = c.audit()
    assert report.ok, report.violations


def status(c: Cluster, alert_blocks: int) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "anchorcli", "status", "--config",
         str(c.member("v0").dir / "node.live.toml"), "--json",
         "--alert-blocks", str(alert_blocks)],
        capture_output=True, text=True, timeout=60,
    )


def test_status_alerts_on_a_mid_epoch_stall(cluster, watch):
    """`status` exits 1 with an alert while no checkpoint confirms, mid-epoch."""
    c = cluster
    watch.wait_more(1, 60, "before the stall")
    limit = 5
    ping = seal("ping", "v1", 0, {}, c.member("v1").bft_secret)
    assert unverified(exchange("127.0.0.1", c.member("v2").port, ping, 10))["type"] == "pong"
    try:
        for vid in ("v2", "v3"):  # n - k + 1 down: no quorum
            c.stop_validator(vid)
        last = watch.spends()[-1].height
        c.wait_for(lambda: c.rpc().getblockcount() - watch.spends()[-1].height >= limit + 1,
                   60, "the stall to last")
        out = status(c, limit)
        assert out.returncode == 1, out.stdout + out.stderr
        alerts = json.loads(out.stdout)["alerts"]
        assert any("no checkpoint for" in a for a in alerts), alerts
        assert watch.spends()[-1].height == last
        assert c.round < OPTS.rounds_per_epoch - 2 * OPTS.handover_margin  # mid-epoch
    finally:
        for vid in ("v2", "v3"):
            c.start_validator(vid)
    watch.wait_more(1, 90, "after the validators are back")
    # v2's node restarted: the ping it answered before is still a replay (item 5).
    again = unverified(exchange("127.0.0.1", c.member("v2").port, ping, 10))
    assert again["type"] == "error" and "replayed" in again["body"]["reasons"][0]
    out = status(c, limit)
    assert not any("no checkpoint for" in a for a in json.loads(out.stdout)["alerts"])


def test_the_chain_runs_past_block_500_and_audits_clean(cluster, watch):
    """Item 9: Litecoin regtest mined past 432 (the launcher's MWEB peg-in) and 500."""
    c = cluster
    c.wait_for(lambda: c.rpc().getblockcount() >= 505, 200, "block 505")
    c.wait_for(lambda: watch.spends()[-1].height > 500, 60, "a checkpoint above block 500")
    assert c.error is None
    with pytest.raises(MiningError, match="generatetoaddress"):  # a failure is an error
        c.pow[0].mine(1, address="not-an-address")
    report = c.audit()
    assert report.ok, report.violations
    heights = [cp.height for cp in report.checkpoints]
    assert len(heights) == len(set(heights))
