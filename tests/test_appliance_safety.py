"""Issue 10 items 3, 4, 5 and 7 against the real `bft-anchor appliance` commands.

Every request goes through `bft-anchor appliance sign` in its own process, on an
appliance directory made by `bft-anchor appliance init`: what an operator runs.
No PoW node is needed here (the coin is named by the deployment file); the items
where the chain matters are in test_topup_regtest.py and test_wedge_regtest.py.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import MAGIC, seed_for

from anchorharness.proposal import propose
from anchornode.bftsim import SimulatedBFTChain
from appliance.config import ApplianceConfig
from appliance.signers.software import SoftwareSigner
from bftanchor.deployment import Deployment
from bftanchor.secretfile import write_secret
from bftanchor.template import Coin, Outpoint

CLI = [sys.executable, "-m", "anchorcli"]
WINDOW = 10
GENESIS = Coin(Outpoint("ab" * 32, 1), 5_000_000, 0)


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60,
                          input=stdin)


class World:
    """Four validators (v0 ours, through the CLI), epochs 0 and 1 (rounds 0-99, 100-199)."""

    def __init__(self, base: Path, name: str = "v0") -> None:
        self.base = base
        self.sim = SimulatedBFTChain.create(4, 100)
        self.dir = base / name
        made = run("appliance", "init", str(self.dir), "--validator-id", "v0")
        assert made.returncode == 0, made.stderr
        # Our validator's key is the seed init wrote; the others' are test seeds.
        self.signers = {"v0": SoftwareSigner.from_file(self.dir / "seed.txt")}
        for i in range(1, 4):
            self.signers[f"v{i}"] = SoftwareSigner.from_seed(seed_for(f"safety/v{i}"))
        self.records = {e: self.sim.make_record(e, {v: s.pow_key(e)
                                                    for v, s in self.signers.items()})
                        for e in (0, 1)}
        Deployment("litecoin-regtest", MAGIC, GENESIS, self.records[0], WINDOW).save(
            self.dir / "deployment.json")
        self.config = self.dir / "appliance.toml"
        self.n = 0

    def request(self, psbt, qc, records=None, lineage=None) -> dict:
        recs = [r.to_json() for r in (records or self.records.values())]
        req = {"psbt": psbt if isinstance(psbt, str) else psbt.to_string(),
               "qc": qc.to_json(), "records": recs}
        if lineage is not None:
            req["lineage"] = lineage
        return req

    def sign(self, request, config: Path | None = None) -> tuple[int, dict, str]:
        self.n += 1
        path = self.base / f"req{self.n}.json"
        path.write_text(request if isinstance(request, str) else json.dumps(request))
        out = run("appliance", "sign", "--config", str(config or self.config), "--request",
                  str(path))
        assert "Traceback" not in out.stderr, out.stderr
        return out.returncode, (json.loads(out.stdout) if out.stdout.strip() else {}), out.stderr

    def decisions(self, config: Path | None = None) -> list[tuple[str, dict]]:
        cfg = ApplianceConfig.load(config or self.config)
        with sqlite3.connect(cfg.journal) as db:
            rows = db.execute("SELECT decision, detail FROM decisions ORDER BY seq").fetchall()
        return [(d, json.loads(detail)) for d, detail in rows]


@pytest.fixture
def world(tmp_path):
    return World(tmp_path)


def refused(world: World, request, *fragments: str) -> list[str]:
    rc, out, err = world.sign(request)
    assert rc == 1 and not out["signed"], (out, err)
    text = " | ".join(out["reasons"])
    for f in fragments:
        assert f in text, text
    decision, detail = world.decisions()[-1]
    assert decision == "refused" and detail["reasons"] == out["reasons"]
    return out["reasons"]


def test_a_ladder_level_cannot_undo_a_handover(world):
    """Item 3: once the handover is signed, a higher-fee level on the same coin that keeps
    the coin in the old epoch is another checkpoint, not a fee level."""
    qc = world.sim.qc(0, 95)
    ho = propose(GENESIS, qc, world.records, True, 2.0, MAGIC)
    rc, out, err = world.sign(world.request(ho.psbt, qc))
    assert rc == 0 and out["signed"], (out, err)
    undo = propose(GENESIS, qc, world.records, False, 5.0, MAGIC)
    refused(world, world.request(undo.psbt, qc), "a fee-ladder level must pay the coin where "
            "the others do (epoch 1's multisig", "found epoch 0's")
    # A real fee level of the handover is still fine.
    bump = propose(GENESIS, qc, world.records, True, 5.0, MAGIC)
    rc, out, _ = world.sign(world.request(bump.psbt, qc))
    assert rc == 0 and out["signed"]


def test_handover_only_inside_the_window_and_nothing_else_there(world):
    """Item 4: end_round - W < r <= end_round for a handover, and never a regular one."""
    early = world.sim.qc(0, 50)
    p = propose(GENESIS, early, world.records, True, 2.0, MAGIC)
    refused(world, world.request(p.psbt, early),
            "handover at round 50 is outside epoch 0's handover window (89, 99]")
    late = world.sim.qc(0, 92)
    p = propose(GENESIS, late, world.records, False, 2.0, MAGIC)
    refused(world, world.request(p.psbt, late), "round 92 is in epoch 0's handover window "
            "(89, 99]: expected a handover to epoch 1, found a regular checkpoint")
    edge = world.sim.qc(0, 89)  # the last round before the window: a regular checkpoint
    p = propose(GENESIS, edge, world.records, False, 2.0, MAGIC)
    rc, out, _ = world.sign(world.request(p.psbt, edge))
    assert rc == 0 and out["signed"]


def test_every_bad_request_is_a_journaled_verdict(world):
    """Item 7: what escaped as exceptions is a refusal with every reason, journaled."""
    qc = world.sim.qc(0, 5)
    good = propose(GENESIS, qc, world.records, False, 2.0, MAGIC)
    # A request file holding a JSON array, or no JSON at all.
    refused(world, json.dumps([world.request(good.psbt, qc)]),
            "the request is a JSON list, expected an object")
    refused(world, "{not json", "the request is not JSON")
    # A fee as large as the coin: refused with the real reasons.
    psbt = good.psbt
    psbt.outputs[1].value = 0  # (embit builds psbt.tx from the input/output maps)
    reasons = refused(world, world.request(psbt, qc), "exceeds the limit of 100000 sat")
    assert any("fee rate" in r for r in reasons), reasons
    # An epoch record with more keys than CHECKMULTISIG allows, offered as epoch 1.
    big = SimulatedBFTChain.create(21, 100)
    keys = {v.id: SoftwareSigner.from_seed(seed_for(f"big/{v.id}")).pow_key(1)
            for v in big.validators}
    huge = big.make_record(1, keys)
    fresh = propose(GENESIS, qc, world.records, False, 2.0, MAGIC)
    rc, out, err = world.sign(world.request(fresh.psbt, qc, [world.records[0], huge]))
    assert rc == 0 and out["signed"], (out, err)  # not needed by this request: harmless
    qc2 = world.sim.qc(0, 95)
    nxt = Coin(Outpoint(out["summary"]["txid"], 1), out["summary"]["coin_value"], 0)
    ho = propose(nxt, qc2, world.records, True, 2.0, MAGIC)
    refused(world, world.request(ho.psbt, qc2, [world.records[0], huge]),
            "record for epoch 1 is not certified")
    # Fields of the wrong type everywhere: a verdict naming them, never a traceback.
    refused(world, {"psbt": 5, "qc": [], "records": "x", "lineage": 7},
            "psbt must be a base64 string, found int", "malformed QC")
    # Junk lineage never stops a good request, and is named when a request is refused.
    junk = {"lineage": [1, "zz", None]}
    rc, out, _ = world.sign(world.request(fresh.psbt, qc) | junk)
    assert rc == 0 and out["signed"]
    qc7 = world.sim.qc(0, 7)
    stale = propose(GENESIS, qc7, world.records, False, 2.0, MAGIC)
    refused(world, world.request(stale.psbt, qc7) | junk, "checkpoint with another payload",
            "lineage: lineage[0] does not parse", "lineage: lineage[1] does not parse")


def test_journal_identity_is_bound_at_init(world, tmp_path):
    """Item 5: a missing, empty, foreign or corrupt journal is refused with one line."""
    qc = world.sim.qc(0, 5)
    p = propose(GENESIS, qc, world.records, False, 2.0, MAGIC)
    rc, out, _ = world.sign(world.request(p.psbt, qc))
    assert rc == 0
    journal = world.dir / "journal.sqlite"
    saved = {s: Path(f"{journal}{s}").read_bytes() for s in ("", "-wal")
             if Path(f"{journal}{s}").exists()}

    def status_fails(*fragments: str) -> None:
        st = run("appliance", "status", "--config", str(world.config))
        assert st.returncode == 2, st.stdout
        lines = st.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in st.stderr, st.stderr
        for f in fragments:
            assert f in lines[0], lines[0]
        # ... and signing is refused the same way, before any decision.
        sg = run("appliance", "sign", "--config", str(world.config), "--request", "-",
                 stdin=json.dumps(world.request(p.psbt, qc)))
        assert sg.returncode == 2 and len(sg.stderr.strip().splitlines()) == 1, sg.stderr

    def restore() -> None:
        for s in ("", "-wal", "-shm"):
            Path(f"{journal}{s}").unlink(missing_ok=True)
        for s, data in saved.items():
            Path(f"{journal}{s}").write_bytes(data)

    for s in ("", "-wal", "-shm"):
        Path(f"{journal}{s}").unlink(missing_ok=True)
    status_fails("journal", "is missing", "restore that file, or import")
    journal.write_bytes(b"")
    status_fails("is empty")
    journal.write_bytes(b"garbage, not SQLite" * 100)
    status_fails("is corrupt or not a journal")
    other = World(tmp_path / "other")
    journal.write_bytes((other.dir / "journal.sqlite").read_bytes())
    status_fails("another appliance's")
    restore()
    assert run("appliance", "status", "--config", str(world.config)).returncode == 0


def test_journal_moves_only_by_export_and_import(world, tmp_path):
    """Item 5: export, init a new machine, import: it refuses what the old one would."""
    qc5, qc9 = world.sim.qc(0, 5), world.sim.qc(0, 9)
    p = propose(GENESIS, qc5, world.records, False, 2.0, MAGIC)
    rc, out, _ = world.sign(world.request(p.psbt, qc5))
    assert rc == 0
    export = tmp_path / "export.json"
    ex = run("appliance", "journal", "export", "--config", str(world.config), "--out",
             str(export))
    assert ex.returncode == 0, ex.stderr
    data = json.loads(export.read_text())
    assert data["watermark"] == {"epoch": 0, "round": 5}
    assert [c["txid"] for c in data["checkpoints"]] == [out["summary"]["txid"]]
    again = run("appliance", "journal", "export", "--config", str(world.config), "--out",
                str(export))
    assert again.returncode == 2 and "not overwriting" in again.stderr

    new = World(tmp_path / "new")
    (new.dir / "deployment.json").write_text((world.dir / "deployment.json").read_text())
    new.records = world.records
    (new.dir / "seed.txt").unlink()  # the new machine holds the old one's key
    write_secret(new.dir / "seed.txt", (world.dir / "seed.txt").read_text())
    imp = run("appliance", "journal", "import", "--config", str(new.config), str(export))
    assert imp.returncode == 0, imp.stderr
    # The new machine refuses another checkpoint on the coin the old one signed for.
    other = propose(GENESIS, qc9, world.records, False, 2.0, MAGIC)
    rc, out2, _ = new.sign(new.request(other.psbt, qc9))
    assert rc == 1 and "already has a checkpoint with another payload" in " ".join(
        out2["reasons"])
    # The identical transaction is still signed (it commits to nothing new).
    rc, _, _ = new.sign(new.request(p.psbt, qc5))
    assert rc == 0
    # A watermark never moves back: an older export leaves it where it is.
    data["watermark"] = {"epoch": 0, "round": 1}
    data["checkpoints"] = []
    older = tmp_path / "older.json"
    older.write_text(json.dumps(data))
    assert run("appliance", "journal", "import", "--config", str(new.config),
               str(older)).returncode == 0
    ex2 = run("appliance", "journal", "export", "--config", str(new.config))
    assert json.loads(ex2.stdout)["watermark"] == {"epoch": 0, "round": 5}
    # A conflicting history is refused as a whole, with one line.
    forged = json.loads(export.read_text())
    forged["checkpoints"][0] |= {"txid": "cd" * 32, "payload": "00" * 53}
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(forged))
    refused_imp = run("appliance", "journal", "import", "--config", str(new.config), str(bad))
    assert refused_imp.returncode == 1 and "conflicts with this journal" in refused_imp.stderr
    assert len(refused_imp.stderr.strip().splitlines()) == 1
    # An unreadable file is bad input: exit 2, one line, the journal untouched.
    for junk in ("[1, 2]", "{not json", "[" * 50_000 + "]" * 50_000,
                 json.dumps(data | {"checkpoints": {"a": 1}})):
        bad.write_text(junk)
        r = run("appliance", "journal", "import", "--config", str(new.config), str(bad))
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_only_sighash_all_is_signed(world):
    """Item 6, through the command: an input asking for another sighash type is refused
    with the reason (the signers refuse it too: test_hwi_signer.py)."""
    qc = world.sim.qc(0, 5)
    for i, sighash in enumerate((0x02, 0x81, 0x83)):
        p = propose(GENESIS, qc, world.records, False, 2.0 + i, MAGIC)
        p.psbt.inputs[0].sighash_type = sighash
        refused(world, world.request(p.psbt, qc),
                f"input 0 asks for sighash type {sighash:#x}, expected SIGHASH_ALL (0x1) only")
    p = propose(GENESIS, qc, world.records, False, 2.0, MAGIC)
    p.psbt.inputs[0].sighash_type = 0x01  # asking for SIGHASH_ALL explicitly is fine
    rc, out, _ = world.sign(world.request(p.psbt, qc))
    assert rc == 0 and out["signed"]
