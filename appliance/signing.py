"""The appliance's decision path: parse, policy, journal, sign, check, answer.

Offline half: imports the checkpoint language, policy, journal and a signer, never
the node or PoW RPC. The order matters: the journal row that allows a signature
is durable before the signer is asked, and the signature is checked against the
sighash before it leaves.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import time
from dataclasses import dataclass, field
from typing import Any

from embit.psbt import PSBT

from appliance.journal import (
    Journal,
    JournalError,
    JournalFull,
    JournalRefusal,
    JournalState,
    Release,
    SignedEntry,
)
from appliance.lineage import releases, verify_lineage
from appliance.policy import Limits, Verdict, evaluate, trusted_records
from appliance.qcverify import Pending, QCVerifier
from appliance.signers.base import Signer, SignerError
from bftanchor.bftsig import verify_each
from bftanchor.deployment import Deployment
from bftanchor.descriptor import multisig_for
from bftanchor.epoch import EpochRecord
from bftanchor.errors import CheckpointError
from bftanchor.psbtread import read_psbt
from bftanchor.qc import QC, SignatureCheck, signature_items
from bftanchor.signreply import SignReply
from bftanchor.template import signature_reply, signatures, verify_partial_sig

log = logging.getLogger("bft_anchor.appliance")

# Refusals journaled: a burst of this many, then this many per second (see _refuse):
# under sustained junk about one row every 5 s, some 10 kB a minute of WAL.
REFUSAL_BURST = 100
REFUSALS_PER_SECOND = 0.2


def _bounded(reasons: list[str], limit: int = 20, width: int = 500) -> list[str]:
    """Reasons as journaled: at most `limit`, each at most `width` characters."""
    out = [r if len(r) <= width else r[:width] + "..." for r in reasons[:limit]]
    if len(reasons) > limit:
        out.append(f"... and {len(reasons) - limit} more")
    return out


# Tests set this to a named point to have the process SIGKILL itself there.
CRASH_ENV = "BFT_ANCHOR_CRASH_AT"


@dataclass
class SignOutcome:
    signed: bool
    reasons: list[str] = field(default_factory=list)
    psbt: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    from_journal: bool = False

    def reply(self) -> SignReply:
        """What goes back to the node: the signed PSBT, or every reason for refusing."""
        if self.signed and self.psbt is not None:
            return SignReply.signature(self.psbt, self.from_journal)
        return SignReply.refusal(self.reasons)

    def to_json(self) -> dict[str, Any]:
        return {
            "signed": self.signed,
            "reasons": self.reasons,
            "psbt": self.psbt,
            "summary": self.summary,
            "from_journal": self.from_journal,
        }


def request_hash(psbt_b64: str, qc_json: Any, records_json: Any) -> str:
    blob = json.dumps([psbt_b64, qc_json, records_json], sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()


def _crash_point(name: str) -> None:
    if os.environ.get(CRASH_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


class Appliance:
    def __init__(
        self,
        deployment: Deployment,
        journal: Journal,
        signer: Signer,
        limits: Limits,
    ) -> None:
        self.deployment = deployment
        self.journal = journal
        self.signer = signer
        self.limits = limits
        self._tokens = float(REFUSAL_BURST)
        self._refill_at = time.monotonic()
        self._suppressed = 0
        # While serving: the process verifying QC signatures ahead (prepare_to_serve).
        self.qc_verifier: QCVerifier | None = None
        journal.store_records([deployment.epoch0])

    def prepare_to_serve(self) -> None:
        """What `appliance serve` does before it answers: the journal's own preparation
        (Journal.prepare_to_serve) and the QC helper process (appliance/qcverify.py)."""
        self.journal.prepare_to_serve()
        if self.qc_verifier is None:
            try:
                self.qc_verifier = QCVerifier()
            except Exception as exc:  # no helper is a slower appliance, not a broken one
                log.warning("no QC helper process (%s): QC signatures are verified in the "
                            "appliance", exc)

    def helpers_ready(self, timeout: float = 0.0) -> bool:
        """Whether both helper processes have started, waiting at most `timeout` s for
        each: requests are answered before that (the appliance does their work itself),
        but a benchmark of the appliance as it serves waits for them."""
        qc = self.qc_verifier is not None and self.qc_verifier.ready(timeout)
        return self.journal.helper_ready(timeout) and qc

    def close(self) -> None:
        """End the helper processes and close the journal."""
        if self.qc_verifier is not None:
            self.qc_verifier.close()
            self.qc_verifier = None
        self.journal.close()

    def held_records(self) -> dict[int, EpochRecord]:
        return {r.epoch: r for r in self.journal.records()}

    def install_record(self, record_json: Any) -> list[str]:
        """Hold a next-epoch record if the current quorum certified it; return problems."""
        try:
            record = EpochRecord.from_json(record_json)
        except CheckpointError as exc:
            return self._record_refused([f"record does not parse: {exc}"])
        records, problems = trusted_records(self.held_records(), [record])
        cannot = getattr(self.signer, "cannot_sign", None)
        member = any(v.fingerprint == self.signer.fingerprint for v in record.validators)
        if not problems and cannot is not None and member:
            # Before the epoch starts, not at signing time: an appliance whose device cannot
            # sign the epoch's script does not help hand the coin to it.
            problems = list(cannot(record))
        if not problems:
            self.journal.store_records([records[record.epoch]])
            self.journal.log("install-record", {"epoch": record.epoch}, epoch=record.epoch)
        return self._record_refused(problems) if problems else problems

    def _record_refused(self, problems: list[str]) -> list[str]:
        """A record the appliance will not hold is a refusal like any other: journaled."""
        self.refuse_request([f"epoch record not installed: {p}" for p in problems])
        return problems

    def decide(
        self, psbt_b64: str, qc_json: Any, records_json: Any, lineage: list[str] | None = None
    ) -> tuple[Verdict, PSBT | None, dict[int, EpochRecord]]:
        """Run the policy without signing and without writing anything (the TUI shows
        this before approval). Proven lineage is applied to a copy of the journal's
        state; it is written only together with a signature (handle_sign)."""
        return self._guarded(psbt_b64, qc_json, records_json, lineage, ahead=False)

    def _guarded(
        self, psbt_b64: str, qc_json: Any, records_json: Any, lineage: list[str] | None,
        ahead: bool,
    ) -> tuple[Verdict, PSBT | None, dict[int, EpochRecord]]:
        """decide(); `ahead`: the QC helper may verify the QC meanwhile, for a caller that
        holds the journal's lock (the helper answers one request at a time)."""
        try:
            return self._decide(psbt_b64, qc_json, records_json, lineage, ahead)
        except Exception as exc:  # every bad request is a verdict, never a traceback
            return Verdict(False, [f"request could not be judged: {type(exc).__name__}: "
                                   f"{exc}"]), None, {}

    def _decide(
        self, psbt_b64: str, qc_json: Any, records_json: Any, lineage: list[str] | None,
        ahead: bool,
    ) -> tuple[Verdict, PSBT | None, dict[int, EpochRecord]]:
        qc: QC | None = None
        qc_reasons: list[str] = []
        try:
            qc = QC.from_json(qc_json)
        except CheckpointError as exc:
            qc_reasons.append(f"malformed QC: {type(exc).__name__}: {exc}")
        held = self.held_records()
        # The QC helper verifies its signatures while the rest is read (appliance/qcverify.py).
        check = self._check_ahead(qc, held) if ahead else verify_each
        try:
            return self._judge(psbt_b64, qc, qc_reasons, held, check, records_json, lineage)
        finally:
            if isinstance(check, Pending):
                check.settle()  # read even when unused: the next answer must be the next one

    def _check_ahead(self, qc: QC | None, held: dict[int, EpochRecord]) -> SignatureCheck:
        verifier = self.qc_verifier
        record = held.get(qc.epoch) if qc is not None else None
        if verifier is None or record is None or qc is None:
            return verify_each
        return verifier.submit(signature_items(qc, record))

    def _judge(
        self,
        psbt_b64: str,
        qc: QC | None,
        qc_reasons: list[str],
        held: dict[int, EpochRecord],
        check: SignatureCheck,
        records_json: Any,
        lineage: list[str] | None,
    ) -> tuple[Verdict, PSBT | None, dict[int, EpochRecord]]:
        reasons: list[str] = []
        psbt: PSBT | None = None
        if not isinstance(psbt_b64, str):
            reasons.append(f"psbt must be a base64 string, found {type(psbt_b64).__name__}")
        else:
            try:
                psbt = read_psbt(psbt_b64)
            except Exception as exc:
                reasons.append(f"malformed PSBT: {exc or type(exc).__name__}")
        reasons += qc_reasons
        offered: list[EpochRecord] = []
        problems: list[str] = []
        if not isinstance(records_json, list):
            problems.append(f"epoch records must be a list, found {type(records_json).__name__}")
            records_json = []
        for r in records_json:
            try:
                offered.append(EpochRecord.from_json(r))
            except CheckpointError as exc:
                problems.append(f"an offered epoch record does not parse: {exc}")
        records, rec_problems = trusted_records(held, offered)
        state = self.journal.state()
        adopted = []
        released: list[Release] = []
        lineage_problems: list[str] = []
        if lineage is not None:
            adopted, lineage_problems = verify_lineage(
                lineage, state, records, self.deployment.magic
            )
            state = state.with_adopted(adopted)
            released = releases(lineage, state, records, self.deployment.magic)
            state = state.with_released(released)
        if psbt is None or qc is None:
            return Verdict(False, reasons + problems), psbt, records
        verdict = evaluate(
            psbt,
            qc,
            records,
            state,
            self.limits,
            self.deployment.magic,
            problems,
            self.deployment.handover_window,
            check,
        )
        # A record that fails to certify, or lineage that proves nothing, matters only if
        # the request needs it: the policy then refuses, and these explain why.
        if not verdict.ok:
            verdict.reasons.extend(rec_problems)
            verdict.reasons.extend(f"lineage: {p}" for p in lineage_problems)
        verdict.adopted = adopted
        verdict.released = released
        verdict.summary["new_records"] = sorted(set(records) - set(held))
        if adopted:
            verdict.summary["adopted"] = [c.txid for c in adopted]
        return verdict, psbt, records

    def handle_sign(
        self, psbt_b64: str, qc_json: Any, records_json: Any, lineage: list[str] | None = None
    ) -> SignOutcome:
        # One decision at a time: the journal check and the signature must not interleave.
        with self.journal.lock:
            try:
                return self._handle_sign(psbt_b64, qc_json, records_json, lineage)
            except JournalError as exc:
                # Nothing leaves without its journal row; a full disk says so plainly.
                log.error("%s", exc)
                reason = "disk full" if isinstance(exc, JournalFull) else "journal unusable"
                return SignOutcome(False, [f"{reason}: {exc}"])

    def _handle_sign(
        self, psbt_b64: str, qc_json: Any, records_json: Any, lineage: list[str] | None
    ) -> SignOutcome:
        verdict, psbt, records = self._guarded(psbt_b64, qc_json, records_json, lineage,
                                               ahead=True)
        summary = dict(verdict.summary)
        state = self.journal.state()  # what the journal holds now (nothing written since)
        # A transaction this appliance signed before is answered from the journal with the
        # very bytes that left then, even when the policy would now refuse it because the
        # chain moved on (its input is no longer the expected coin): the node's reply may
        # have been lost, and repeating a signature commits the appliance to nothing new.
        # Only an identical transaction (same txid) qualifies; anything else is decided below.
        done = self._signed_before(
            psbt, verdict.candidate.txid if verdict.candidate else None, state)
        if done is not None:
            log.info("answered from journal: txid %s", done.txid)
            summary.update(txid=done.txid, epoch=done.epoch, round=done.round)
            return SignOutcome(True, [], done.signed_psbt, summary, from_journal=True)
        if not verdict.ok or verdict.candidate is None or psbt is None:
            self._refuse(verdict.reasons or ["refused"], summary)
            return SignOutcome(False, verdict.reasons, summary=summary)
        cand = verdict.candidate
        existing = state.by_txid(cand.txid)
        if existing is not None and existing.signed_psbt is not None:
            log.info("answered from journal: txid %s", cand.txid)
            return SignOutcome(True, [], existing.signed_psbt, summary, from_journal=True)
        source = multisig_for(records[cand.epoch])

        def sign() -> str:
            """The signature, checked; computed while the reservation's fsync runs and
            handed back by the journal only once the reservation is durable."""
            signed = self.signer.sign(psbt, source)
            before = signatures(psbt, 0, source)
            mine = [
                (pub, sig)
                for pub, sig in signatures(signed, 0, source).items()
                if pub not in before
            ]
            if not mine:
                raise SignerError("the signer returned no signature for input 0")
            for pub, sig in mine:  # every signer's, the device's as the software's
                try:
                    verify_partial_sig(psbt, 0, source, pub, sig)
                except CheckpointError as exc:
                    raise SignerError(f"the signer returned a bad signature: {exc}") from exc
            if any(
                signed.inputs[i].partial_sigs != psbt.inputs[i].partial_sigs
                or signed.inputs[i].taproot_sigs != psbt.inputs[i].taproot_sigs
                for i in range(1, len(psbt.inputs))
            ):
                raise SignerError("the signer signed an input other than the coin")
            # Signatures already on the coin (checked by the policy) stay, with its own.
            return signature_reply(psbt, 0, source, {**before, **dict(mine)}).to_string()

        out: str | None = None
        failure: str | None = None
        held = state.released
        new_releases = [r for r in verdict.released if r.input == cand.input
                        and r.payload != cand.payload and (r.input, r.payload) not in held]
        if new_releases:  # the "signed" decision names them too (the rows are in `released`)
            summary["released"] = [{"payload": r.payload, "txids": list(r.txids),
                                    "signers": list(r.signers)} for r in new_releases]
        try:
            _, out = self.journal.reserve_while(
                cand, request_hash(psbt_b64, qc_json, records_json), verdict.adopted, sign,
                verdict.released,
            )
        except JournalRefusal as exc:
            reasons = [f"journal: {r}" for r in exc.reasons]
            self._refuse(reasons, summary)
            return SignOutcome(False, reasons, summary=summary)
        except (SignerError, CheckpointError) as exc:
            # The journal keeps the reservation: the same tx may be retried, nothing
            # conflicting may be signed, which is the safe side of a failed device.
            failure = f"signer: {exc}"
        for r in new_releases:
            log.warning("released payload %s on coin %s: signed elsewhere by %d "
                        "validators (%s)", r.payload, r.input, len(r.signers), ", ".join(r.txids))
        if verdict.adopted:
            self.journal.log("adopted", {"txids": [c.txid for c in verdict.adopted]})
            log.info("adopted %d checkpoint(s) signed by the quorum", len(verdict.adopted))
        self.journal.store_records(
            records[e] for e in {cand.epoch, cand.dest_epoch, *(c.dest_epoch for c in
                                                               verdict.adopted)}
        )
        _crash_point("after-journal")  # durable, and the signature has not left
        if failure is not None or out is None:
            reason = failure or "signer: no signature"
            self._refuse([reason], summary)
            return SignOutcome(False, [reason], summary=summary)
        self.journal.record_signature(cand.txid, out, summary, cand.epoch, cand.round)
        _crash_point("after-sign")
        self.journal.keep_wal_room()
        log.info(
            "signed epoch %d round %d txid %s fee %d%s",
            cand.epoch,
            cand.round,
            cand.txid,
            cand.fee,
            " (handover)" if cand.handover else "",
        )
        return SignOutcome(True, [], out, summary)

    def refuse_request(self, reasons: list[str]) -> SignOutcome:
        """A request that could not even be read as one: a journaled refusal all the same."""
        try:
            with self.journal.lock:
                self._refuse(reasons, {})
        except JournalError as exc:
            log.error("%s", exc)
        return SignOutcome(False, reasons)

    @staticmethod
    def _signed_before(
        psbt: PSBT | None, txid: str | None, state: JournalState
    ) -> SignedEntry | None:
        """The journal's entry for this PSBT's transaction if this appliance signed it
        (`txid`: the policy's, when it judged the transaction)."""
        if psbt is None:
            return None
        if txid is None:
            try:
                txid = psbt.tx.txid().hex()
            except Exception:
                return None
        entry = state.by_txid(txid)
        if entry is None or entry.kind != "signed" or entry.signed_psbt is None:
            return None
        return entry

    def _refuse(self, reasons: list[str], summary: dict[str, Any]) -> None:
        """Journal a refusal, rate-limited: a compromised node can send junk as fast as the
        link carries it, and each journaled row costs an fsync and WAL space (the WAL is
        not folded back while serving, see Journal). A burst is journaled in full; beyond
        it, refusals are counted and the next one journaled says how many were dropped.
        Refusals commit the appliance to nothing, so none of this touches safety."""
        now = time.monotonic()
        self._tokens = min(REFUSAL_BURST,
                           self._tokens + (now - self._refill_at) * REFUSALS_PER_SECOND)
        self._refill_at = now
        if self._tokens < 1:
            self._suppressed += 1
            return
        self._tokens -= 1
        detail: dict[str, Any] = {"reasons": _bounded(reasons), **summary}
        if self._suppressed:
            detail["suppressed_before"] = self._suppressed
            log.warning("%d further refusal(s) were not journaled (rate limit)",
                        self._suppressed)
            self._suppressed = 0
        log.warning("refused: %s", "; ".join(detail["reasons"])[:2000])
        try:
            self.journal.log(
                "refused",
                detail,
                summary.get("txid"),
                summary.get("epoch"),
                summary.get("round"),
            )
        except JournalError as exc:  # the refusal stands; say why it is not journaled
            log.error("%s", exc)
            reasons.append(f"{'disk full' if isinstance(exc, JournalFull) else 'journal'}: "
                           f"this refusal could not be journaled: {exc}")

    def status(self) -> dict[str, Any]:
        state = self.journal.state()
        return {
            "fingerprint": self.signer.fingerprint.hex(),
            "journal_id": self.journal.get_meta("journal_id"),
            "journal_head": self.journal.head(),
            "expected_coins": [
                {"outpoint": str(c.outpoint), "value": c.value, "epoch": c.epoch}
                for c in state.spendable().values()
            ],
            "epochs": sorted(self.held_records()),
        }
