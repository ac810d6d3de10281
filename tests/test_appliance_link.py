"""The real appliance process (`bft-anchor appliance serve`) over a real pseudo-terminal.

The appliance opens the pty's slave path like any serial port; the test is the node on
the master end (LinkApplianceClient, or LinkEndpoint/LinkClient when it needs the raw
bytes). The journal is read back through the link's STATUS, the control socket, the
`appliance status` command and, for what must not be there, SQLite itself.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import shutil
import sqlite3
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from embit import bip39
from embit.psbt import PSBT
from helpers import MAGIC, Fleet, seed_for, twin_qc, v0_signature

from anchornode.bftsim import SimulatedBFTChain
from anchornode.link_client import LinkApplianceClient
from anchornode.procutil import stop_process
from appliance.config import ApplianceConfig
from appliance.serve import control_call
from appliance.signers.software import SoftwareSigner
from appliance.signing import CRASH_ENV, request_hash
from bftanchor.deployment import Deployment
from bftanchor.descriptor import EpochMultisig
from bftanchor.epoch import HARDENED
from bftanchor.errors import CheckpointError
from bftanchor.link.frame import MAGIC as SYNC
from bftanchor.link.frame import FrameDecoder, encode_frame
from bftanchor.link.messages import MsgType, encode_payload
from bftanchor.link.pty import open_pty_pair
from bftanchor.link.transport import LinkAuthError, LinkClient, LinkEndpoint, Message
from bftanchor.payload import Payload
from bftanchor.qc import QC
from bftanchor.secretfile import write_secret
from bftanchor.template import Coin, Outpoint, build_checkpoint_psbt, verify_partial_sig

CLI = [sys.executable, "-m", "anchorcli"]


# --- the appliance as a process on a pty ------------------------------------------------


@dataclass
class Served:
    """One appliance directory, served by a real `appliance serve` process on a pty."""

    fleet: Fleet
    root: Path
    control: Path
    master: Any = None
    slave: str = ""
    proc: subprocess.Popen | None = None
    log: Path | None = None
    procs: list[subprocess.Popen] = field(default_factory=list)

    @property
    def config(self) -> Path:
        return self.root / "appliance.toml"

    @property
    def journal(self) -> Path:
        return self.root / "journal.sqlite"

    def start(self, *extra: str) -> Served:
        if self.master is None:
            self.master, self.slave = open_pty_pair()
        self.log = self.root / f"serve-{len(self.procs)}.log"
        env = dict(os.environ)
        env.pop(CRASH_ENV, None)
        with open(self.log, "wb") as logf:
            self.proc = subprocess.Popen(
                [*CLI, "-v", "appliance", "serve", "--config", str(self.config),
                 "--link", self.slave, "--control", str(self.control), *extra],
                stdout=logf, stderr=logf, stdin=subprocess.DEVNULL, env=env,
            )
        self.procs.append(self.proc)
        deadline = time.monotonic() + 20
        # The control socket answers once the journal is open, and says when the link is:
        # bytes written to the pty before the appliance opens it are flushed by the open.
        while True:
            try:
                if control_call(self.control, {"cmd": "status"}, timeout=2).get(
                        "link_connected"):
                    break
            except OSError:
                pass
            assert self.proc.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, "the appliance did not come up"
            time.sleep(0.02)
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> int:
        assert self.proc is not None
        return stop_process(self.proc)

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        if self.master is not None:
            self.master.close()

    def ctl(self, **request: Any) -> dict:
        return control_call(self.control, request)

    def signed_rows(self) -> list[tuple]:
        """(txid, epoch, round, payload, signed_psbt) of every signature in the journal."""
        db = sqlite3.connect(self.journal)
        try:
            return db.execute(
                "SELECT txid, epoch, round, payload, signed_psbt FROM signed "
                "WHERE kind = 'signed' ORDER BY seq"
            ).fetchall()
        finally:
            db.close()

    def decisions(self) -> list[dict]:
        return self.ctl(cmd="history", limit=10_000)["history"]


@pytest.fixture
def served(regtest, tmp_path, request):
    tag = request.node.name
    fleet = Fleet(regtest, tmp_path / "fleet", tag=tag)
    root = tmp_path / "appliance"
    root.mkdir()
    fleet.deployment.save(root / "deployment.json")
    write_secret(root / "seed.txt", "hex:" + seed_for(f"{tag}/v0").hex() + "\n")
    (root / "appliance.toml").write_text(
        'deployment = "deployment.json"\njournal = "journal.sqlite"\nvalidator_id = "v0"\n'
        '[signer]\nkind = "software"\nseed_file = "seed.txt"\n'
    )
    sockdir = Path(tempfile.mkdtemp(prefix="bfa-"))  # AF_UNIX paths are short
    s = Served(fleet, root, sockdir / "control.sock")
    yield s
    s.close()
    shutil.rmtree(sockdir, ignore_errors=True)


# --- requests ----------------------------------------------------------------------------


@dataclass
class Req:
    psbt: str
    qc: dict
    records: list
    txid: str
    coin: Coin  # what output 1 creates

    @property
    def payload(self) -> dict:
        return {"psbt": self.psbt, "qc": self.qc, "records": self.records}

    @property
    def args(self) -> tuple:
        return self.psbt, self.qc, self.records, None

    @property
    def id(self) -> str:
        """The id the approval queue gives it."""
        return request_hash(self.psbt, self.qc, self.records)[:16]


def make_req(fleet: Fleet, coin: Coin, qc: QC, fee: int = 600) -> Req:
    source = EpochMultisig(fleet.records[coin.epoch])
    payload = Payload(qc.epoch, qc.round, qc.commit_state_id, magic=MAGIC)
    psbt = build_checkpoint_psbt(coin, source, payload, source, fee)
    txid = psbt.tx.txid().hex()
    records = [fleet.records[0].to_json()]
    return Req(psbt.to_string(), qc.to_json(), records, txid,
               Coin(Outpoint(txid, 1), psbt.tx.vout[1].value, coin.epoch))




def test_sign_round_trip_over_the_pty(served):
    fleet = served.fleet
    served.start()
    client = LinkApplianceClient(served.master, timeout=10)
    assert client.status()["journal_head"]["signed"] == 0
    assert client.hello["device_fingerprint"] == fleet.signers["v0"].fingerprint.hex()
    assert client.hello["appliance_id"] == "v0" and client.hello["epochs"] == [0]

    qc = fleet.qc(5)
    req = make_req(fleet, fleet.genesis, qc)
    out = client.sign(*req.args)
    assert out.signed, out
    signed = PSBT.from_string(out.psbt)
    assert signed.tx.txid().hex() == req.txid  # the very transaction asked for
    sig = v0_signature(fleet, out.psbt)  # verifies against the sighash
    other = make_req(fleet, fleet.genesis, qc, fee=700)  # same payload, another tx
    with pytest.raises(CheckpointError):
        verify_partial_sig(PSBT.from_string(other.psbt), 0, EpochMultisig(fleet.records[0]),
                           EpochMultisig(fleet.records[0]).key_for("v0").pubkey, sig)
    # The same key in this process makes the same (RFC 6979) signature.
    ref = fleet.appliances["v0"].handle_sign(*req.args)
    assert v0_signature(fleet, ref.psbt) == sig

    # The journal head moved to this checkpoint, seen through the link...
    status = client.status()
    head = status["journal_head"]
    assert head["signed"] == 1 and head["txid"] == req.txid
    assert (head["epoch"], head["round"]) == (0, 5)
    coins = {c["outpoint"] for c in status["expected_coins"]}
    assert f"{req.txid}:1" in coins and str(fleet.genesis.outpoint) in coins
    # ...the control socket...
    assert served.ctl(cmd="status")["status"]["journal_head"] == head
    # ...and `bft-anchor appliance status`, a second process on the same journal.
    st = subprocess.run([*CLI, "appliance", "status", "--config", str(served.config)],
                        capture_output=True, text=True, timeout=60)
    assert st.returncode == 0, st.stderr
    assert json.loads(st.stdout)["journal_head"] == head
    assert [r[0] for r in served.signed_rows()] == [req.txid]

    # Asked again (a new request id): answered from the journal, the same bytes.
    again = client.request(MsgType.SIGN_REQUEST, req.payload)
    assert again.type == MsgType.SIGN_REPLY and again.payload["from_journal"] is True
    assert again.payload["psbt"] == out.psbt
    assert served.alive()
    assert served.stop() == 0  # SIGTERM: a clean stop


def test_the_node_keeps_its_link_across_an_appliance_restart(served):
    """A failed exchange must not close a port the node handed in (the devnet's pty master):
    the appliance comes back on the same line and the same client carries on."""
    fleet = served.fleet
    served.start()
    client = LinkApplianceClient(served.master, timeout=0.5)
    req = make_req(fleet, fleet.genesis, fleet.qc(6))
    first = client.sign(*req.args)
    assert first.signed, first
    served.proc.kill()
    served.proc.wait()
    down = client.sign(*req.args)
    assert not down.signed and "appliance link" in down.reasons[0]
    served.start()
    again = client.sign(*req.args)
    assert again.signed and again.psbt == first.psbt
    assert client.status()["journal_head"]["txid"] == req.txid


# --- garbage on the line ------------------------------------------------------------------


def header(frame_type: int, rid: int, length: int) -> bytes:
    fields = struct.pack(">2sBBBII", SYNC, 1, frame_type, 0, rid, length)
    return fields + struct.pack(">I", zlib.crc32(fields))


def exchange(ep: LinkEndpoint, frame: bytes, rid: int, timeout: float = 10.0) -> Message:
    """Write a frame and wait for the reply that carries its request id."""
    ep.write_frame(frame)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        item = ep.receive(0.1)
        if isinstance(item, Message) and item.request_id == rid and item.type != MsgType.ERROR:
            return item
    raise AssertionError(f"no reply to {rid:#x}")


@pytest.mark.parametrize("seed", [11, 12])
def test_garbage_never_crashes_never_signs_and_the_link_recovers(served, seed):
    rng = random.Random(seed)
    fleet = served.fleet
    served.start()
    ep = LinkEndpoint(served.master, frame_timeout=0.5)
    client = LinkClient(ep, timeout=10, retries=1)

    def status() -> dict:
        return client.request(MsgType.STATUS_REQUEST, {}).payload

    def sign_frame(req: Req) -> tuple[int, bytes]:
        rid = client.new_request_id()
        return rid, ep.encode(MsgType.SIGN_REQUEST, rid, req.payload)

    coin, rnd, valid = fleet.genesis, 3, 0
    req = make_req(fleet, coin, fleet.qc(rnd))
    rid, frame = sign_frame(req)
    for _cycle in range(3):
        reply = exchange(ep, frame, rid)  # a valid request, sent whole
        assert reply.type == MsgType.SIGN_REPLY and reply.payload["from_journal"] is False
        v0_signature(fleet, reply.payload["psbt"])
        valid += 1
        last_frame = frame
        coin, rnd = req.coin, rnd + rng.randrange(1, 4)
        req = make_req(fleet, coin, fleet.qc(rnd))  # the next one: only garbled at first
        rid, frame = sign_frame(req)

        crc_bad = bytearray(frame)
        crc_bad[-1] ^= 0x01  # the frame CRC itself
        body_bad = bytearray(frame)
        body_bad[rng.randrange(17, len(frame) - 4)] ^= 1 << rng.randrange(8)  # one bit
        head_bad = bytearray(frame)
        head_bad[rng.randrange(2, 17)] ^= 0xFF  # the header: found as noise, never waited on
        junk = [
            rng.randbytes(rng.randrange(1, 4000)),
            frame[: rng.randrange(1, len(frame))],  # truncated
            frame[: rng.randrange(1, 17)],  # a truncated header
            bytes(crc_bad),
            bytes(body_bad),
            bytes(head_bad),
            header(MsgType.SIGN_REQUEST, rid, 1 << 30),  # oversize: never buffered
            header(MsgType.SIGN_REQUEST, rid ^ 1, len(frame)) + bytes(40),  # and cut short
            encode_frame(MsgType.SIGN_REQUEST, rid ^ 2, b'{"psbt": 5}'),  # a bad message
            SYNC * 30 + rng.randbytes(200),
            last_frame,  # replayed: answered from the reply cache, not signed again
            last_frame,
        ]
        rng.shuffle(junk)
        for piece in junk:
            served.master.write(piece)
            if rng.random() < 0.3:
                time.sleep(rng.random() * 0.05)

        # The link recovers: the next valid request is answered...
        st = status()
        assert served.alive()
        # ...and nothing but the valid requests was ever signed.
        assert st["journal_head"]["signed"] == valid
        assert len(served.signed_rows()) == valid
        assert st["pending"] == []
    reply = exchange(ep, frame, rid)
    assert reply.type == MsgType.SIGN_REPLY and reply.payload["from_journal"] is False
    valid += 1
    assert status()["journal_head"]["signed"] == valid
    assert [d["decision"] for d in served.decisions()].count("signed") == valid
    assert served.alive()
    assert served.stop() == 0


def test_a_replayed_sign_request_is_answered_from_the_cache_byte_for_byte(served):
    fleet = served.fleet
    served.start()
    master = served.master
    LinkApplianceClient(master, timeout=10).status()  # up and answering

    def read_reply(rid: int, timeout: float = 10.0) -> tuple[bytes, Message]:
        """The raw bytes of the one reply frame to rid (nothing else is on the line)."""
        raw, decoder = b"", FrameDecoder()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            chunk = master.read(65536)
            raw += chunk
            for item in decoder.feed(chunk):
                if getattr(item, "request_id", None) == rid:
                    assert decoder.buffered == 0
                    payload = json.loads(item.payload)
                    return raw, Message(MsgType(item.frame_type), rid, payload)
        raise AssertionError("no reply")

    req = make_req(fleet, fleet.genesis, fleet.qc(7))
    rid = 0x5EED0001
    frame = encode_frame(MsgType.SIGN_REQUEST, rid, encode_payload(MsgType.SIGN_REQUEST,
                                                                    req.payload))
    master.write(frame)
    first_raw, first = read_reply(rid)
    assert first.type == MsgType.SIGN_REPLY and first.payload["from_journal"] is False
    sig = v0_signature(fleet, first.payload["psbt"])

    journal_before = (served.signed_rows(), served.decisions())
    for _ in range(3):
        master.write(frame)  # the same bytes again
        raw, again = read_reply(rid)
        assert raw == first_raw  # byte for byte: the cached reply frame
    assert (served.signed_rows(), served.decisions()) == journal_before

    # The same request under a new id is run again: the journal answers it (not the cache).
    rid2 = 0x5EED0002
    master.write(encode_frame(MsgType.SIGN_REQUEST, rid2,
                              encode_payload(MsgType.SIGN_REQUEST, req.payload)))
    raw2, fresh = read_reply(rid2)
    assert raw2 != first_raw and fresh.payload["from_journal"] is True
    assert v0_signature(fleet, fresh.payload["psbt"]) == sig
    assert served.signed_rows() == journal_before[0]
    assert served.alive()


# --- pairing ----------------------------------------------------------------------------


def test_pairing_secret_decides_who_may_ask(served):
    fleet = served.fleet
    secret = secrets.token_hex(32).encode()
    (served.root / "pairing.secret").write_bytes(secret + b"\n")
    served.start("--secret-file", str(served.root / "pairing.secret"))

    paired = LinkApplianceClient(served.master, secret=secret, timeout=10)
    first = make_req(fleet, fleet.genesis, fleet.qc(4))
    out = paired.sign(*first.args)
    assert out.signed, out
    v0_signature(fleet, out.psbt)

    second = make_req(fleet, first.coin, fleet.qc(9))
    wrong = LinkApplianceClient(served.master, secret=b"w" * 32, timeout=5)
    started = time.monotonic()
    with pytest.raises(LinkAuthError, match="HMAC tag does not match"):
        wrong.status()
    refused = wrong.sign(*second.args)
    assert not refused.signed and refused.psbt is None
    assert "pairing authentication failed" in refused.reasons[0]
    assert time.monotonic() - started < 4  # refused at once, not timed out

    unpaired = LinkApplianceClient(served.master, secret=None, timeout=5)
    with pytest.raises(LinkAuthError, match="this side has no secret") as err:
        unpaired.status()
    assert "paired with this node" in str(err.value)
    assert not unpaired.sign(*second.args).signed

    # Nothing was signed for them; the paired node still has its link (the failed
    # clients did not tear the pty down) and its request is signed fresh.
    assert [r[0] for r in served.signed_rows()] == [first.txid]
    assert paired.status()["journal_head"]["signed"] == 1
    reply = paired.request(MsgType.SIGN_REQUEST, second.payload)
    assert reply.type == MsgType.SIGN_REPLY and reply.payload["from_journal"] is False
    assert [r[0] for r in served.signed_rows()] == [first.txid, second.txid]
    assert served.alive()


# --- manual approval ----------------------------------------------------------------------


def pending_ids(served: Served) -> list[str]:
    return [i["id"] for i in served.ctl(cmd="pending")["pending"]]


def test_manual_approval(served):
    fleet = served.fleet
    served.start("--approval", "manual")
    client = LinkApplianceClient(served.master, timeout=10)
    assert client.status()["approval_mode"] == "manual"

    # A: held, listed, approved; the node's next ask gets the journal's signature.
    qa = fleet.qc(5)
    a = make_req(fleet, fleet.genesis, qa)
    held = client.sign(*a.args)
    assert held.pending and not held.signed and held.psbt is None
    assert a.id in held.reasons[0]
    (item,) = served.ctl(cmd="pending")["pending"]
    assert item["id"] == a.id and item["state"] == "pending"
    assert item["summary"]["txid"] == a.txid
    assert (item["summary"]["epoch"], item["summary"]["round"]) == (0, 5)
    assert served.signed_rows() == []  # held is not signed
    assert client.sign(*a.args).pending  # asking again while held: still pending
    approved = served.ctl(cmd="approve", id=a.id)
    assert approved["ok"] and approved["outcome"]["signed"]
    assert pending_ids(served) == []
    reply = client.request(MsgType.SIGN_REQUEST, a.payload)
    assert reply.type == MsgType.SIGN_REPLY and reply.payload["from_journal"] is True
    ((txid, _, _, _, stored),) = served.signed_rows()
    assert txid == a.txid
    assert v0_signature(fleet, reply.payload["psbt"]) == v0_signature(fleet, stored)

    # B: the node waits (polling) while the operator approves.
    b = make_req(fleet, a.coin, fleet.qc(8))
    waiting = LinkApplianceClient(served.master, timeout=10, approval_wait=20, poll=0.1)

    def operator() -> None:
        deadline = time.monotonic() + 15
        while b.id not in pending_ids(served) and time.monotonic() < deadline:
            time.sleep(0.05)
        served.ctl(cmd="approve", id=b.id)

    t = threading.Thread(target=operator)
    t.start()
    out = waiting.sign(*b.args)
    t.join()
    assert out.signed, out
    v0_signature(fleet, out.psbt)

    # C: refused by the operator: a logged refusal and no signature for it, ever.
    c = make_req(fleet, b.coin, fleet.qc(11))
    assert client.sign(*c.args).pending
    assert served.ctl(cmd="refuse", id=c.id)["ok"]
    no = client.request(MsgType.SIGN_REQUEST, c.payload)
    assert no.type == MsgType.REFUSAL and no.payload["reasons"] == ["refused by the operator"]
    assert not served.ctl(cmd="approve", id=c.id)["ok"]  # decided: cannot be approved later
    logged = [d for d in served.decisions() if d["txid"] == c.txid]
    assert [d["decision"] for d in logged] == ["refused"]
    assert logged[0]["detail"]["reasons"] == ["refused by the operator"]
    assert c.txid not in {r[0] for r in served.signed_rows()}

    # What the policy refuses is never held: refused at once, and cannot be approved.
    twin = make_req(fleet, a.coin, twin_qc(fleet, QC.from_json(b.qc)))  # B's round, B's input
    greedy = make_req(fleet, b.coin, fleet.qc(12), fee=150_000)
    for bad, why in ((twin, "equivocation"), (greedy, "exceeds the limit")):
        reply = client.request(MsgType.SIGN_REQUEST, bad.payload)
        assert reply.type == MsgType.REFUSAL, reply
        assert why in " ".join(reply.payload["reasons"])
        assert pending_ids(served) == []
        denied = served.ctl(cmd="approve", id=bad.id)
        assert not denied["ok"] and "no pending request" in denied["error"]
    assert [r[0] for r in served.signed_rows()] == [a.txid, b.txid]
    assert served.alive()


def test_an_approval_cannot_override_the_journal(served):
    """Two payloads for one round may both wait for the operator (nothing is signed yet);
    approving both signs only the first, and the node hears the journal's reason."""
    fleet = served.fleet
    served.start("--approval", "manual")
    client = LinkApplianceClient(served.master, timeout=10)
    qc = fleet.qc(5)
    one = make_req(fleet, fleet.genesis, qc)
    other = make_req(fleet, fleet.genesis, twin_qc(fleet, qc))
    assert client.sign(*one.args).pending and client.sign(*other.args).pending
    assert sorted(pending_ids(served)) == sorted([one.id, other.id])
    assert served.ctl(cmd="approve", id=one.id)["outcome"]["signed"]
    second = served.ctl(cmd="approve", id=other.id)["outcome"]
    assert not second["signed"] and "equivocation" in " ".join(second["reasons"])
    reply = client.request(MsgType.SIGN_REQUEST, other.payload)
    assert reply.type == MsgType.REFUSAL
    assert "equivocation" in " ".join(reply.payload["reasons"])
    assert "refused by the operator" not in reply.payload["reasons"]
    assert [r[0] for r in served.signed_rows()] == [one.txid]


def test_a_journaled_switch_to_auto_does_not_loosen_manual_at_start(served):
    served.start("--approval", "manual")
    assert served.ctl(cmd="mode", mode="auto")["mode"] == "auto"
    assert served.stop() == 0
    served.start("--approval", "manual")  # asked for manual: it is manual
    assert served.ctl(cmd="status")["status"]["approval_mode"] == "manual"
    assert served.stop() == 0
    served.start()  # the config says auto, the last switch said auto
    assert served.ctl(cmd="status")["status"]["approval_mode"] == "auto"
    assert served.ctl(cmd="mode", mode="manual")["ok"]
    assert served.stop() == 0
    served.start()  # a switch to manual is kept over the config's auto
    assert served.ctl(cmd="status")["status"]["approval_mode"] == "manual"


# --- appliance init -----------------------------------------------------------------------


def test_appliance_init_writes_a_working_directory(tmp_path):
    d = tmp_path / "v3"

    def init(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([*CLI, "appliance", "init", str(d), *extra],
                              capture_output=True, text=True, timeout=60)

    made = init("--validator-id", "v3", "--max-fee-sat", "5000", "--max-fee-rate", "25.5")
    assert made.returncode == 0, made.stderr
    cfg_text = (d / "appliance.toml").read_text()
    seed_text = (d / "seed.txt").read_text()
    words = seed_text.split()
    assert len(words) == 24 and bip39.mnemonic_is_valid(" ".join(words))
    assert (d / "seed.txt").stat().st_mode & 0o077 == 0  # only the owner reads the seed

    cfg = ApplianceConfig.load(d / "appliance.toml")
    assert cfg.validator_id == "v3" and cfg.approval == "auto"
    assert cfg.signer.kind == "software" and cfg.signer.seed_file == d / "seed.txt"
    assert (cfg.limits.max_fee_sat, cfg.limits.max_fee_rate) == (5000, 25.5)
    assert cfg.deployment == d / "deployment.json" and cfg.journal == d / "journal.sqlite"

    again = init("--validator-id", "v9")
    assert again.returncode == 2 and "--force" in again.stderr
    assert (d / "appliance.toml").read_text() == cfg_text  # nothing overwritten
    assert (d / "seed.txt").read_text() == seed_text

    def status() -> subprocess.CompletedProcess:
        return subprocess.run([*CLI, "appliance", "status", "--config", str(d / "appliance.toml")],
                              capture_output=True, text=True, timeout=60)

    missing = status()
    assert missing.returncode == 2 and "deployment" in missing.stderr

    # A deployment beside it (epoch 0 holds this appliance's key): status works.
    signer = SoftwareSigner.from_file(d / "seed.txt", coin_type=1)
    others = {f"v{i}": SoftwareSigner.from_seed(seed_for(f"init/v{i}")) for i in range(3)}
    keys = {vid: s.pow_key(0) for vid, s in others.items()} | {"v3": signer.pow_key(0)}
    record = SimulatedBFTChain.create(4, 50).make_record(0, keys)  # validators v0..v3
    assert record.validators[0].origin_path[1] - HARDENED == 1
    genesis = Coin(Outpoint("ab" * 32, 1), 5_000_000, 0)
    Deployment("litecoin-regtest", MAGIC, genesis, record, 10).save(d / "deployment.json")
    ok = status()
    assert ok.returncode == 0, ok.stderr
    st = json.loads(ok.stdout)
    assert st["fingerprint"] == signer.fingerprint.hex()
    assert st["journal_head"]["signed"] == 0 and st["epochs"] == [0]
    assert st["expected_coins"] == [{"outpoint": str(genesis.outpoint), "value": 5_000_000,
                                     "epoch": 0}]

    forced = init("--force", "--validator-id", "v3")
    assert forced.returncode == 0, forced.stderr
    assert (d / "seed.txt").read_text() == seed_text  # a seed is never overwritten
    again_cfg = ApplianceConfig.load(d / "appliance.toml")
    assert again_cfg.validator_id == "v3"
    # The journal is kept too, and stays bound: same identity before and after.
    assert again_cfg.journal_id == cfg.journal_id and cfg.journal_id is not None


def test_short_pairing_secret_is_a_clear_usage_error(tmp_path):
    import subprocess
    import sys

    (tmp_path / "secret").write_text("short")
    (tmp_path / "a.toml").write_text(
        'deployment = "d.json"\njournal = "j.sqlite"\n[signer]\nkind = "software"\n'
        'seed_file = "s"\n'
    )
    out = subprocess.run(
        [sys.executable, "-m", "anchorcli", "appliance", "serve", "--config",
         str(tmp_path / "a.toml"), "--link", "loop://", "--secret-file",
         str(tmp_path / "secret")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "use at least 16" in out.stderr and "Traceback" not in out.stderr
