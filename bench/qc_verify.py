"""QC verification against the floor libsecp256k1 allows: k bare ECDSA verifications.

verify_qc must check k signatures, so k times one bare verification through the
fastest binding installed is what no implementation can beat; the ratio to it is
the Python overhead (parsing, lookups, range checks). Target: <= 1.3x at n = 100.
Records for n > 20 are built without .validate() (their pow keys are placeholders):
verify_qc reads only epoch, validators (id, bft_pubkey) and threshold.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from bench.context import BenchContext
from bench.table import Row
from bench.timing import interleaved, median, p95
from bftanchor import bftsig
from bftanchor.bftsig import pubkey_from_secret, sign_compact
from bftanchor.epoch import EpochRecord, Validator, threshold_for
from bftanchor.qc import QC, VoteInfo, signed_digest, verify_qc

NAME = "qc_verify"
SIZES = (4, 21, 100, 150)
# Targets on the median against k bare libsecp256k1 verifications: 1.3x for n = 100
# (issue 13), 1.2x for n = 150 (issue 14, tapscript-sized validator sets).
TARGETS = {100: 1.3, 150: 1.2}


def make_case(n: int) -> tuple[QC, EpochRecord]:
    """An epoch of n validators and a QC signed by exactly k = floor(2n/3)+1 of them."""
    secrets = [hashlib.sha256(f"bench qc n{n} v{i}".encode()).digest() for i in range(n)]
    validators = tuple(
        Validator(f"v{i}", pubkey_from_secret(s), "(not used by verify_qc)")
        for i, s in enumerate(secrets)
    )
    k = threshold_for(n)
    record = EpochRecord(
        epoch=7, start_round=700, end_round=799, threshold=k, validators=validators
    )
    vote = VoteInfo(
        id=hashlib.sha256(b"id").digest(),
        round=742,
        epoch=7,
        parent_id=hashlib.sha256(b"parent").digest(),
        parent_round=741,
        exec_state_id=hashlib.sha256(b"exec").digest(),
    )
    commit = hashlib.sha256(f"commit n{n}".encode()).digest()
    vih = vote.hash()
    digest = signed_digest(commit, vih)
    sigs = tuple((f"v{i}", sign_compact(secrets[i], digest)) for i in range(k))
    return QC(vote, commit, vih, sigs), record


def floor_candidates() -> dict[str, Callable[[], object]]:
    """One bare verification (signature and key already parsed) through each binding."""
    secret = hashlib.sha256(b"bench floor").digest()
    digest = hashlib.sha256(b"bench floor digest").digest()
    sig64 = sign_compact(secret, digest)
    pub = pubkey_from_secret(secret)
    out: dict[str, Callable[[], object]] = {}

    from embit.util import secp256k1 as es

    esig, epub = es.ecdsa_signature_parse_compact(sig64), es.ec_pubkey_parse(pub)
    assert es.ecdsa_verify(esig, digest, epub)
    out["embit ecdsa_verify (ctypes)"] = lambda: es.ecdsa_verify(esig, digest, epub)
    try:
        import coincurve
        from coincurve._libsecp256k1 import ffi, lib

        ctx = coincurve.GLOBAL_CONTEXT.ctx
        csig = ffi.new("secp256k1_ecdsa_signature *")
        assert lib.secp256k1_ecdsa_signature_parse_compact(ctx, csig, sig64)
        cpub = coincurve.PublicKey(pub)
        der = coincurve.PrivateKey(secret).sign(digest, hasher=None)
        assert cpub.verify(der, digest, hasher=None)
        assert lib.secp256k1_ecdsa_verify(ctx, csig, digest, cpub.public_key)
        out["coincurve PublicKey.verify (cffi)"] = lambda: cpub.verify(der, digest, hasher=None)
        out["coincurve secp256k1_ecdsa_verify (cffi)"] = lambda: lib.secp256k1_ecdsa_verify(
            ctx, csig, digest, cpub.public_key
        )
    except ImportError:
        pass
    return out


def run(ctx: BenchContext) -> list[Row]:
    cases = {n: make_case(n) for n in SIZES}
    for qc, record in cases.values():
        verify_qc(qc, record)  # correct before it is timed
    fns: dict[str, Callable[[], object]] = dict(floor_candidates())
    for n, (qc, record) in cases.items():
        fns[f"verify n={n}"] = lambda qc=qc, record=record: verify_qc(qc, record)
        js = qc.to_json()
        fns[f"parse+verify n={n}"] = lambda js=js, record=record: verify_qc(
            QC.from_json(js), record
        )
    budget = ctx.pick(24.0, 2.0)
    ctx.say(
        f"qc_verify: {len(fns)} interleaved timings for {budget:.0f} s "
        f"(verify backend: {bftsig.VERIFY_BACKEND})"
    )
    times = interleaved(fns, budget_s=budget, target_batch_s=ctx.pick(0.02, 0.01))

    floors = {name: median(times[name]) for name in fns if not name.startswith(("verify", "parse"))}
    floor_name = min(floors, key=floors.__getitem__)
    floor = floors[floor_name]
    floor_p95 = p95(times[floor_name])
    rows: list[Row] = []
    for name, t in sorted(floors.items(), key=lambda kv: kv[1]):
        rows.append(
            Row(
                NAME,
                "one bare verify",
                name,
                t * 1e6,
                "us",
                floor * 1e6,
                "fastest binding",
                "floor" if name == floor_name else "",
            )
        )
    for n, (qc, _record) in cases.items():
        k = len(qc.signatures)
        base = k * floor * 1e6
        label = f"{k} x bare verify"
        v = times[f"verify n={n}"]
        note = f"backend {bftsig.VERIFY_BACKEND}"
        if n in TARGETS:
            ok = median(v) * 1e6 / base <= TARGETS[n]
            note += f"; target <= {TARGETS[n]}x {'met' if ok else 'MISSED'}"
        rows.append(
            Row(NAME, f"n={n} k={k}", "verify_qc median", median(v) * 1e6, "us", base, label, note)
        )
        rows.append(
            Row(
                NAME,
                f"n={n} k={k}",
                "verify_qc p95 of batches",
                p95(v) * 1e6,
                "us",
                k * floor_p95 * 1e6,
                f"{k} x bare verify p95",
            )
        )
        pv = times[f"parse+verify n={n}"]
        rows.append(
            Row(
                NAME,
                f"n={n} k={k}",
                "QC.from_json + verify_qc median",
                median(pv) * 1e6,
                "us",
                base,
                label,
            )
        )
    return rows
