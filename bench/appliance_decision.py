"""The appliance's whole decision (Appliance.handle_sign: parse, QC, policy, journal with
fsync, sign, check) against the PoW node's own wallet signing the same PSBT.

Each sample is a new round spending the previous round's coin, so the journal
allows it and never answers from its cache. The node wallet (a legacy litecoind
wallet holding the same validator key, m/48h/1h/0h/2h/0/0, and the multisig) signs
the same PSBT with walletprocesspsbt over RPC in the same round: the baseline is
"just produce the signature". Through HWI, the same appliance drives the project's
Jade emulator over TCP, when appliance/signers/hwi.py exists.

Two passes per size: first HWI and the software signer on the same requests (the HWI
rows and the overhead pairs), then, with the HWI journal closed, the software signer
alone (its rows): a real appliance has one journal, and a second one's unsynced writes
on the same disk are flushed by the first one's fsyncs, which is not its cost.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from embit.psbt import PSBT

from anchorharness.fleet import BenchFleet
from appliance.signers.base import Signer
from appliance.signing import Appliance
from bench.context import BenchContext
from bench.table import Row
from bench.timing import keep_going, median, p95
from bftanchor.epoch import SCRIPT_TR
from bftanchor.template import verify_partial_sig

NAME = "appliance_decision"
SIZES = (4, 15)
HWI_MODULE = Path(__file__).resolve().parent.parent / "appliance" / "signers" / "hwi.py"
VID = "v0"
HWI_OVERHEAD_TARGET_MS = 3.0
# The decision re-reads the whole journal, so it slows as the journal grows (the
# memory benchmark shows by how much over 1,000 requests); the figures here are for
# a journal of at most this many rows.
MAX_ROUNDS = 100


def serve(app: Appliance) -> None:
    """Start `app` as `appliance serve` does (Appliance.prepare_to_serve), and wait for its
    helper processes: a serving appliance answers before they have started, doing their
    work itself, but what is timed here is its steady state."""
    app.prepare_to_serve()
    if not app.helpers_ready(10.0):
        raise RuntimeError("the appliance's helper processes did not start within 10 s")


def sequence(
    fleet: BenchFleet,
    appliances: list[Appliance],
    wallet: Any,
    budget_s: float,
    min_n: int,
    max_n: int,
) -> tuple[list[list[float]], list[float]]:
    """Each round: every appliance decides the same request (each on its own journal), then
    the node wallet signs it; return each appliance's timings and the node's."""
    pub = fleet.multisig.key_for(VID).pubkey
    app_t: list[list[float]] = [[] for _ in appliances]
    node_t: list[float] = []
    start = time.perf_counter()
    while keep_going(start, budget_s, len(node_t), min_n, max_n):
        p, request = fleet.next_request()
        for app, times in zip(appliances, app_t, strict=True):
            t0 = time.perf_counter()
            out = app.handle_sign(*request)
            times.append(time.perf_counter() - t0)
            if not out.signed or out.from_journal:
                raise RuntimeError(f"the appliance did not sign afresh: {out.reasons}")
        t1 = time.perf_counter()
        got = wallet.walletprocesspsbt(request[0], True, "ALL", False)
        node_t.append(time.perf_counter() - t1)
        node_sig = PSBT.from_string(got["psbt"]).inputs[0].partial_sigs.get(pub)
        if node_sig is None:
            raise RuntimeError("the node wallet did not sign with the validator's key")
        verify_partial_sig(p.psbt, 0, fleet.multisig, pub, node_sig)
        fleet.advance(p)
    return app_t, node_t


def rows_for(case: str, signer: str, app_t: list[float], node_t: list[float]) -> list[Row]:
    label = "node walletprocesspsbt"
    note = f"{len(app_t)} rounds, journal 0..{len(app_t)} rows"
    return [
        Row(
            NAME,
            case,
            f"handle_sign median ({signer})",
            median(app_t) * 1e3,
            "ms",
            median(node_t) * 1e3,
            label,
            note,
        ),
        Row(
            NAME,
            case,
            f"handle_sign p95 ({signer})",
            p95(app_t) * 1e3,
            "ms",
            p95(node_t) * 1e3,
            label,
            note,
        ),
    ]


def hwi_signer_for(fleet: BenchFleet) -> tuple[Signer, Any]:
    """An HWISigner on a Jade emulator holding v0's mnemonic; returns (signer, emulator)."""
    from appliance.emulator import JadeEmulator
    from appliance.signers.hwi import HWISigner

    emu = JadeEmulator(port=0, mnemonic=fleet.mnemonics[VID])
    emu.start()
    try:
        signer = HWISigner(None, "jade", emu.path, coin_type=1)
        if signer.fingerprint != fleet.signers[VID].fingerprint:
            raise RuntimeError("the emulator's fingerprint is not v0's")
    except BaseException:
        emu.stop()
        raise
    return signer, emu


def run(ctx: BenchContext) -> list[Row]:
    node = ctx.node()
    wallet = node.wallet_rpc
    rows: list[Row] = []
    hwi_rows: list[Row] = []
    for n in SIZES:
        fleet = BenchFleet(n, tag=f"decision-{n}")
        fleet.fake_genesis()
        fleet.teach_wallet(wallet, VID)
        case = f"n={n} k={fleet.k} wsh-sortedmulti"
        scratch = ctx.scratch(f"decision-{n}")
        app = fleet.appliance(VID, scratch / "software.sqlite")
        serve(app)
        signer, emu, why_not = None, None, ""
        if not HWI_MODULE.exists():
            why_not = "HWI signer not present"
        else:
            try:
                signer, emu = hwi_signer_for(fleet)
            except Exception as exc:
                why_not = f"{type(exc).__name__}: {exc}"
        budget = (ctx.pick(20.0, 1.5), ctx.pick(40, 5), MAX_ROUNDS)
        hwi_app: Appliance | None = None
        try:
            if signer is not None:
                hwi_app = fleet.appliance(VID, scratch / "hwi.sqlite", signer)
                serve(hwi_app)
                # The first round registers the multisig on the device: left out.
                sequence(fleet, [app, hwi_app], wallet, 0.0, 1, 1)
                ctx.say(f"appliance_decision: n={n}, HWI on the Jade emulator and the "
                        "software signer, same requests, vs node wallet")
                app_t, node_t = sequence(fleet, [app, hwi_app], wallet, *budget)
                # An appliance keeps one journal: the HWI one is closed (and the emulator
                # stopped) before the software signer is timed alone, so that its pending
                # writes are not flushed by the software journal's fsyncs.
                hwi_app.close()
                hwi_app = None
                emu.stop()
                emu = None
            ctx.say(f"appliance_decision: n={n}, software signer vs node wallet")
            sw_t, sw_node_t = sequence(fleet, [app], wallet, *budget)
        finally:
            app.close()
            if hwi_app is not None:
                hwi_app.close()
            if emu is not None:
                emu.stop()
        rows += rows_for(case, "software signer", sw_t[0], sw_node_t)
        if signer is None:
            hwi_rows.append(
                Row(NAME, case, "handle_sign (HWI, Jade emulator)", None, "",
                    note=f"not measured: {why_not}")
            )
            continue
        hwi_rows += rows_for(case, "HWI, Jade emulator", app_t[1], node_t)
        overhead = [h - s for h, s in zip(app_t[1], app_t[0], strict=True)]
        hwi_rows.append(
            Row(
                NAME,
                case,
                "HWI path overhead over software, median of pairs",
                median(overhead) * 1e3,
                "ms",
                HWI_OVERHEAD_TARGET_MS,
                "target",
                "same request, same round: HWI client, link to the emulator and its signing",
            )
        )
    return rows + hwi_rows + tapscript_scale(ctx)


def tapscript_scale(ctx: BenchContext) -> list[Row]:
    """The decision for a 67-of-100 tapscript epoch against the 11-of-15 wsh one.

    No node wallet signs tapscript (litecoind's has no tr() descriptors), so the
    baseline is the appliance's own n = 15 decision, alternated round by round with
    the n = 100 one so both see the same machine. Target: within 3x.
    """
    n_big = ctx.pick(100, 21)
    big = BenchFleet(n_big, tag=f"decision-tr-{n_big}", script=SCRIPT_TR)
    small = BenchFleet(15, tag="decision-wsh-15")
    apps = {}
    for name, fleet in (("big", big), ("small", small)):
        fleet.fake_genesis()
        apps[name] = fleet.appliance(VID, ctx.scratch(f"decision-scale-{name}") / "j.sqlite")
        serve(apps[name])
    times: dict[str, list[float]] = {"big": [], "small": []}
    ctx.say("appliance_decision: n=100 tapscript vs n=15 wsh, software signer, alternated")
    start = time.perf_counter()
    first = True
    while keep_going(start, ctx.pick(20.0, 1.0), len(times["big"]), ctx.pick(30, 3),
                     MAX_ROUNDS):
        for name, fleet in (("big", big), ("small", small)):
            p, request = fleet.next_request()
            t0 = time.perf_counter()
            out = apps[name].handle_sign(*request)
            dt = time.perf_counter() - t0
            if not out.signed or out.from_journal:
                raise RuntimeError(f"n={fleet.n}: the appliance did not sign: {out.reasons}")
            if not first:  # the first round of each parses and derives the records
                times[name].append(dt)
            fleet.advance(p)
        first = False
    for a in apps.values():
        a.close()
    case = f"n={big.n} k={big.k} tr-sortedmulti_a"
    label = "n=15 k=11 wsh, same run"
    note = f"{len(times['big'])} rounds each, alternated; target <= 3x"
    return [
        Row(NAME, case, "handle_sign median (software signer)", median(times["big"]) * 1e3,
            "ms", median(times["small"]) * 1e3, label, note),
        Row(NAME, case, "handle_sign p95 (software signer)", p95(times["big"]) * 1e3,
            "ms", p95(times["small"]) * 1e3, label, note),
    ]
