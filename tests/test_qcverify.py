"""The QC helper process of a serving appliance: it only ever shortens the decision. Every
request is decided exactly as without it (the same verdict, the same reasons), and a
helper that lies about nothing but is slow, gone or out of step leaves the appliance
verifying QCs itself."""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import signal
import time

import pytest

from anchorharness.fleet import BenchFleet
from appliance import qcverify
from appliance.policy import evaluate
from appliance.qcverify import QCVerifier
from bftanchor.bftsig import sign_compact
from bftanchor.errors import BadSignature
from bftanchor.qc import QC, signature_items


def _world(tmp_path, n: int, tag: str):
    """Two appliances of one validator on twin journals: one with the helper, one without."""
    fleet = BenchFleet(n, tag=tag)
    fleet.fake_genesis()
    helped = fleet.appliance("v0", tmp_path / "helped.sqlite")
    helped.prepare_to_serve()
    assert helped.helpers_ready(10.0)  # requests before that are decided without them
    alone = fleet.appliance("v0", tmp_path / "alone.sqlite")
    return fleet, helped, alone


def _forged(qc_json: dict, index: int, how: str) -> dict:
    """The QC with the signature at `index` (in the QC's order) made bad in some way."""
    out = copy.deepcopy(qc_json)
    vid = list(out["signatures"])[index]
    sig = bytearray.fromhex(out["signatures"][vid])
    if how == "flip":
        sig[5] ^= 1
    elif how == "high-s":  # its malleable twin: s -> n - s
        n = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
        sig[32:] = (n - int.from_bytes(sig[32:], "big")).to_bytes(32, "big")
    elif how == "other-key":  # a well-formed signature, by a key that is not the member's
        sig[:] = sign_compact(bytes(range(1, 33)), bytes(32))
    out["signatures"][vid] = sig.hex()
    return out


@pytest.mark.parametrize("n", [4, 15])
def test_every_forged_signature_is_refused_with_the_reasons_given_without_the_helper(
        tmp_path, n):
    fleet, helped, alone = _world(tmp_path, n, f"qcv-{n}")
    try:
        k = fleet.k
        for round_no, (index, how) in enumerate(
                [(0, "flip"), (k - 1, "flip"), (k // 2, "high-s"), (k - 1, "other-key")]):
            p, (psbt, qc_json, records) = fleet.next_request()
            bad = _forged(qc_json, index, how)
            got = helped.handle_sign(psbt, bad, records)
            want = alone.handle_sign(psbt, bad, records)
            assert not got.signed and got.reasons == want.reasons, (round_no, how)
            assert got.reasons[0].startswith("QC does not verify"), got.reasons
            assert len(got.reasons) == 1
            # And the genuine QC of the same round is signed by both, the same bytes.
            good_h = helped.handle_sign(psbt, qc_json, records)
            good_a = alone.handle_sign(psbt, qc_json, records)
            assert good_h.signed and good_a.signed and good_h.psbt == good_a.psbt
            fleet.advance(p)
        assert helped.qc_verifier is not None and helped.qc_verifier.broken is None
    finally:
        helped.close()
        alone.close()


def test_a_qc_with_other_faults_names_only_the_qc_as_when_it_was_checked_first(tmp_path):
    fleet, helped, alone = _world(tmp_path, 4, "qcv-first")
    try:
        p, (psbt, qc_json, records) = fleet.next_request()
        bad = _forged(qc_json, 1, "flip")
        # The same QC fields, so the payload still matches; the fee limit is also broken.
        helped.limits = alone.limits = type(helped.limits)(max_fee_sat=1)
        got, want = helped.handle_sign(psbt, bad, records), alone.handle_sign(psbt, bad, records)
        assert got.reasons == want.reasons
        assert [r.split(":")[0] for r in got.reasons] == ["QC does not verify"]
        assert "txid" not in got.summary and "fee" not in got.summary
    finally:
        helped.close()
        alone.close()


def test_the_policy_checks_the_signatures_it_is_given_to_check(tmp_path):
    fleet = BenchFleet(4, tag="qcv-check")
    fleet.fake_genesis()
    app = fleet.appliance("v0", tmp_path / "j.sqlite")
    try:
        p, (psbt, qc_json, records) = fleet.next_request()
        qc = QC.from_json(qc_json)
        asked = []

        def refuse_all(items):
            asked.append(list(items))
            return [BadSignature("signature does not verify") for _ in items]

        verdict = evaluate(p.psbt, qc, {0: fleet.record}, app.journal.state(), app.limits,
                           app.deployment.magic, None, None, refuse_all)
        assert asked == [signature_items(qc, fleet.record)]
        assert not verdict.ok and verdict.reasons[0].startswith("QC does not verify")
    finally:
        app.close()


def test_an_answer_left_unread_does_not_answer_the_next_request(tmp_path):
    fleet, helped, alone = _world(tmp_path, 4, "qcv-unread")
    try:
        p, (psbt, qc_json, records) = fleet.next_request()
        # A PSBT that does not parse: the policy never asks for the QC's verdict.
        out = helped.handle_sign("cHNidP8=", qc_json, records)
        assert not out.signed
        bad = _forged(qc_json, 0, "flip")
        assert not helped.handle_sign(psbt, bad, records).signed
        assert helped.handle_sign(psbt, qc_json, records).signed
        assert helped.qc_verifier.broken is None
    finally:
        helped.close()
        alone.close()


def test_a_helper_that_is_gone_leaves_the_appliance_verifying_itself(tmp_path, caplog):
    fleet, helped, alone = _world(tmp_path, 4, "qcv-gone")
    try:
        os.kill(helped.qc_verifier.pid, signal.SIGKILL)
        helped.qc_verifier._proc.wait()
        p, (psbt, qc_json, records) = fleet.next_request()
        with caplog.at_level(logging.WARNING, "bft_anchor.appliance"):
            assert not helped.handle_sign(psbt, _forged(qc_json, 2, "flip"), records).signed
        assert helped.qc_verifier.broken is not None
        assert "verified in the appliance from now on" in caplog.text
        assert helped.handle_sign(psbt, qc_json, records).signed
    finally:
        helped.close()
        alone.close()


def test_a_stuck_helper_is_dropped_after_its_timeout(tmp_path, monkeypatch):
    monkeypatch.setattr(qcverify, "ANSWER_TIMEOUT_S", 0.3)
    fleet, helped, alone = _world(tmp_path, 4, "qcv-stuck")
    pid = helped.qc_verifier.pid
    try:
        os.kill(pid, signal.SIGSTOP)
        p, (psbt, qc_json, records) = fleet.next_request()
        assert helped.handle_sign(psbt, qc_json, records).signed
        assert helped.qc_verifier.broken.startswith("no answer in")
    finally:
        with contextlib.suppress(ProcessLookupError):  # killed when dropped
            os.kill(pid, signal.SIGCONT)
        helped.close()
        alone.close()


def test_the_helper_says_all_verify_only_when_each_does(tmp_path):
    fleet = BenchFleet(15, tag="qcv-raw")
    qc = fleet.qc()
    items = signature_items(qc, fleet.record)
    verifier = QCVerifier()
    try:
        assert verifier.ready(10.0)
        assert verifier.submit(items).settle() is True
        for i in range(len(items)):
            pub, digest, sig = items[i]
            bad = items[:i] + [(pub, digest, sig[:40] + bytes([sig[40] ^ 1]) + sig[41:])] \
                + items[i + 1:]
            pending = verifier.submit(bad)
            share = pending._share
            # A bad one in the helper's share is its answer; one in the kept third is not.
            assert pending.settle() is (i >= share)
            assert verifier.broken is None
        # Asked about other triples than it was sent, it answers from the appliance.
        pending = verifier.submit(items)
        forged = [(p, d, bytes(64)) for p, d, _ in items]
        assert all(e is not None for e in pending(forged))
        assert verifier.broken is None
        # An answer to another request is not taken for this one.
        verifier.submit(items)
        second = verifier.submit(items)
        assert second.settle() is False
        assert verifier.broken.startswith("it answered request")
    finally:
        verifier.close()


def test_a_request_before_the_helper_has_started_does_not_wait_for_it(tmp_path, monkeypatch):
    monkeypatch.setattr(qcverify, "HELPER", "import time; time.sleep(60)\n" + qcverify.HELPER)
    monkeypatch.setattr(qcverify, "ANSWER_TIMEOUT_S", 30.0)  # a wait would show
    fleet = BenchFleet(4, tag="qcv-early")
    fleet.fake_genesis()
    app = fleet.appliance("v0", tmp_path / "j.sqlite")
    try:
        app.prepare_to_serve()
        assert not app.qc_verifier.ready(0.2)
        p, (psbt, qc_json, records) = fleet.next_request()
        t0 = time.monotonic()
        assert not app.handle_sign(psbt, _forged(qc_json, 1, "flip"), records).signed
        assert app.handle_sign(psbt, qc_json, records).signed
        assert time.monotonic() - t0 < 10
        assert app.qc_verifier.broken is None  # not dropped: it is only late
    finally:
        app.qc_verifier._proc.kill()
        app.close()
