"""Issue 10 items 3, 4, 5 and 7 against the real `bft-anchor appliance` commands.

Every request goes through `bft-anchor appliance sign` in its own process, on an
appliance directory made by `bft-anchor appliance init`: what an operator runs.
No PoW node is needed here (the coin is named by the deployment file); the items
where the chain matters are in test_topup_regtest.py and test_wedge_regtest.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import MAGIC, seed_for

from anchorharness.cliappliance import CliAppliance, run_cli
from anchorharness.proposal import propose
from anchornode.bftsim import SimulatedBFTChain
from appliance.signers.software import SoftwareSigner
from bftanchor.secretfile import write_secret
from bftanchor.template import Coin, Outpoint

GENESIS = Coin(Outpoint("ab" * 32, 1), 5_000_000, 0)


class World(CliAppliance):
    """Four validators (v0 ours, through the CLI), epochs 0 and 1 (rounds 0-99, 100-199)."""

    def __init__(self, base: Path, name: str = "v0") -> None:
        super().__init__(base, GENESIS, "safety", name=name)

    def request(self, psbt, qc, records=None, lineage=None) -> dict:
        recs = [r.to_json() for r in (records or self.records.values())]
        req = {"psbt": psbt if isinstance(psbt, str) else psbt.to_string(),
               "qc": qc.to_json(), "records": recs}
        if lineage is not None:
            req["lineage"] = lineage
        return req

    def sign(self, request, config: Path | None = None) -> tuple[int, dict, str]:
        out = self.sign_cli(request, config)
        return out.returncode, (json.loads(out.stdout) if out.stdout.strip() else {}), out.stderr


@pytest.fixture
def world(tmp_path):
    return World(tmp_path)


def test_a_ladder_level_cannot_undo_a_handover(world):
    """Item 3: once the handover is signed, a higher-fee level on the same coin that keeps
    the coin in the old epoch is another checkpoint, not a fee level."""
    qc = world.sim.qc(0, 95)
    ho = propose(GENESIS, qc, world.records, True, 2.0, MAGIC)
    world.signed(world.request(ho.psbt, qc))
    undo = propose(GENESIS, qc, world.records, False, 5.0, MAGIC)
    world.refused(world.request(undo.psbt, qc), "a fee-ladder level must pay the coin where "
            "the others do (epoch 1's multisig", "found epoch 0's")
    # A real fee level of the handover is still fine.
    bump = propose(GENESIS, qc, world.records, True, 5.0, MAGIC)
    world.signed(world.request(bump.psbt, qc))


def test_handover_only_inside_the_window_and_nothing_else_there(world):
    """Item 4: end_round - W < r <= end_round for a handover, and never a regular one."""
    early = world.sim.qc(0, 50)
    p = propose(GENESIS, early, world.records, True, 2.0, MAGIC)
    world.refused(world.request(p.psbt, early),
            "handover at round 50 is outside epoch 0's handover window (89, 99]")
    late = world.sim.qc(0, 92)
    p = propose(GENESIS, late, world.records, False, 2.0, MAGIC)
    world.refused(world.request(p.psbt, late), "round 92 is in epoch 0's handover window "
            "(89, 99]: expected a handover to epoch 1, found a regular checkpoint")
    edge = world.sim.qc(0, 89)  # the last round before the window: a regular checkpoint
    p = propose(GENESIS, edge, world.records, False, 2.0, MAGIC)
    world.signed(world.request(p.psbt, edge))


def test_every_bad_request_is_a_journaled_verdict(world):
    """Item 7: what escaped as exceptions is a refusal with every reason, journaled."""
    qc = world.sim.qc(0, 5)
    good = propose(GENESIS, qc, world.records, False, 2.0, MAGIC)
    # A request file holding a JSON array, or no JSON at all.
    world.refused(json.dumps([world.request(good.psbt, qc)]),
            "the request is a JSON list, expected an object")
    world.refused("{not json", "the request is not JSON")
    # A fee as large as the coin: refused with the real reasons.
    psbt = good.psbt
    psbt.outputs[1].value = 0  # (embit builds psbt.tx from the input/output maps)
    reasons = world.refused(world.request(psbt, qc), "exceeds the limit of 100000 sat")
    assert any("fee rate" in r for r in reasons), reasons
    # An epoch record with more keys than CHECKMULTISIG allows, offered as epoch 1.
    big = SimulatedBFTChain.create(21, 100)
    keys = {v.id: SoftwareSigner.from_seed(seed_for(f"big/{v.id}")).pow_key(1)
            for v in big.validators}
    huge = big.make_record(1, keys)
    fresh = propose(GENESIS, qc, world.records, False, 2.0, MAGIC)
    # epoch 1's oversized record is not needed by this request: harmless
    out = world.signed(world.request(fresh.psbt, qc, [world.records[0], huge]))
    qc2 = world.sim.qc(0, 95)
    nxt = Coin(Outpoint(out["summary"]["txid"], 1), out["summary"]["coin_value"], 0)
    ho = propose(nxt, qc2, world.records, True, 2.0, MAGIC)
    world.refused(world.request(ho.psbt, qc2, [world.records[0], huge]),
            "record for epoch 1 is not certified")
    # Fields of the wrong type everywhere: a verdict naming them, never a traceback.
    world.refused({"psbt": 5, "qc": [], "records": "x", "lineage": 7},
            "psbt must be a base64 string, found int", "malformed QC")
    # Junk lineage never stops a good request, and is named when a request is refused.
    junk = {"lineage": [1, "zz", None]}
    world.signed(world.request(fresh.psbt, qc) | junk)
    qc7 = world.sim.qc(0, 7)
    stale = propose(GENESIS, qc7, world.records, False, 2.0, MAGIC)
    world.refused(world.request(stale.psbt, qc7) | junk, "checkpoint with another payload",
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
        st = run_cli("appliance", "status", "--config", str(world.config))
        assert st.returncode == 2, st.stdout
        lines = st.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in st.stderr, st.stderr
        for f in fragments:
            assert f in lines[0], lines[0]
        # ... and signing is refused the same way, before any decision.
        sg = run_cli("appliance", "sign", "--config", str(world.config), "--request", "-",
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
    assert run_cli("appliance", "status", "--config", str(world.config)).returncode == 0


def test_journal_moves_only_by_export_and_import(world, tmp_path):
    """Item 5: export, init a new machine, import: it refuses what the old one would."""
    qc5, qc9 = world.sim.qc(0, 5), world.sim.qc(0, 9)
    p = propose(GENESIS, qc5, world.records, False, 2.0, MAGIC)
    rc, out, _ = world.sign(world.request(p.psbt, qc5))
    assert rc == 0
    export = tmp_path / "export.json"
    ex = run_cli("appliance", "journal", "export", "--config", str(world.config), "--out",
             str(export))
    assert ex.returncode == 0, ex.stderr
    data = json.loads(export.read_text())
    assert data["watermark"] == {"epoch": 0, "round": 5}
    assert [c["txid"] for c in data["checkpoints"]] == [out["summary"]["txid"]]
    again = run_cli("appliance", "journal", "export", "--config", str(world.config), "--out",
                str(export))
    assert again.returncode == 2 and "not overwriting" in again.stderr

    new = World(tmp_path / "new")
    (new.dir / "deployment.json").write_text((world.dir / "deployment.json").read_text())
    new.records = world.records
    (new.dir / "seed.txt").unlink()  # the new machine holds the old one's key
    write_secret(new.dir / "seed.txt", (world.dir / "seed.txt").read_text())
    imp = run_cli("appliance", "journal", "import", "--config", str(new.config), str(export))
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
    assert run_cli("appliance", "journal", "import", "--config", str(new.config),
               str(older)).returncode == 0
    ex2 = run_cli("appliance", "journal", "export", "--config", str(new.config))
    assert json.loads(ex2.stdout)["watermark"] == {"epoch": 0, "round": 5}
    # A conflicting history is refused as a whole, with one line.
    forged = json.loads(export.read_text())
    forged["checkpoints"][0] |= {"txid": "cd" * 32, "payload": "00" * 53}
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(forged))
    refused_imp = run_cli("appliance", "journal", "import", "--config", str(new.config), str(bad))
    assert refused_imp.returncode == 1 and "conflicts with this journal" in refused_imp.stderr
    assert len(refused_imp.stderr.strip().splitlines()) == 1
    # An unreadable file is bad input: exit 2, one line, the journal untouched.
    for junk in ("[1, 2]", "{not json", "[" * 50_000 + "]" * 50_000,
                 json.dumps(data | {"checkpoints": {"a": 1}})):
        bad.write_text(junk)
        r = run_cli("appliance", "journal", "import", "--config", str(new.config), str(bad))
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_only_sighash_all_is_signed(world):
    """Item 6, through the command: an input asking for another sighash type is refused
    with the reason (the signers refuse it too: test_hwi_signer.py)."""
    qc = world.sim.qc(0, 5)
    for i, sighash in enumerate((0x02, 0x81, 0x83)):
        p = propose(GENESIS, qc, world.records, False, 2.0 + i, MAGIC)
        p.psbt.inputs[0].sighash_type = sighash
        world.refused(world.request(p.psbt, qc),
                f"input 0 asks for sighash type {sighash:#x}, expected SIGHASH_ALL (0x1) only")
    p = propose(GENESIS, qc, world.records, False, 2.0, MAGIC)
    p.psbt.inputs[0].sighash_type = 0x01  # asking for SIGHASH_ALL explicitly is fine
    world.signed(world.request(p.psbt, qc))
