"""Catching up with checkpoints the quorum made without this appliance.

An appliance that was offline while others signed still expects an old coin. The
node can show it the checkpoint transactions since then; each is accepted only if
it spends the coin the appliance expects and its witness carries k valid signatures
of that epoch's keys. k signatures are proof that a quorum of appliances signed it
under their own policies, so nothing is taken on the node's word.
"""

from __future__ import annotations

from embit.ec import PublicKey, Signature
from embit.transaction import SIGHASH, Transaction, TransactionOutput

from appliance.journal import Candidate, JournalState, Release
from bftanchor import tapscript
from bftanchor.coinpath import paid_epoch
from bftanchor.descriptor import EpochMultisig, multisig_for
from bftanchor.epoch import EpochRecord
from bftanchor.payload import Payload
from bftanchor.template import Coin, Outpoint

MAX_LINEAGE = 1000


def quorum_signers(
    tx: Transaction,
    coin: Coin,
    ms: EpochMultisig,
    prevouts: dict[Outpoint, TransactionOutput] | None = None,
) -> list[PublicKey]:
    """Keys whose valid signatures the coin input's witness carries (CHECKMULTISIG order).

    A tapscript signature (BIP341) commits to every input's previous output: those of
    top-up inputs must be in `prevouts`, or no signature can be proven.
    """
    if isinstance(ms, tapscript.TapscriptMultisig):
        spent = [TransactionOutput(coin.value, ms.script_pubkey)]
        for txin in tx.vin[1:]:
            prev = (prevouts or {}).get(Outpoint(txin.txid.hex(), txin.vout))
            if prev is None:
                return []
            spent.append(prev)
        return tapscript.witness_signers(tx, ms, spent)
    items = tx.vin[0].witness.items if tx.vin[0].witness else []
    if len(items) < 2 or items[0] != b"" or items[-1] != ms.witness_script.data:
        return []
    msg = tx.sighash_segwit(0, ms.witness_script, coin.value, SIGHASH.ALL)
    keys = [k.pubkey for k in ms.keys]
    found: list[PublicKey] = []
    ki = 0
    for sig in items[1:-1]:
        if not sig or sig[-1] != SIGHASH.ALL:
            return []
        try:
            parsed = Signature.parse(sig[:-1])
        except Exception:
            return []
        while ki < len(keys) and not keys[ki].verify(parsed, msg):
            ki += 1
        if ki == len(keys):
            return []
        found.append(keys[ki])
        ki += 1
    return found


def verify_lineage(
    raw_txs: list[str], state: JournalState, records: dict[int, EpochRecord], magic: bytes
) -> tuple[list[Candidate], list[str]]:
    """Quorum-signed checkpoints to adopt, parents first, and what was wrong with the rest.

    A transaction is adopted when it spends a coin this appliance can name (the genesis,
    or output 1 of anything it signed or adopted) and its witness carries k valid
    signatures of that coin's epoch. Whatever its own unused attempts on that coin were:
    under f < n/3 a quorum-signed spend is the quorum's choice (or a fee-ladder sibling of
    it). Nothing else in the lineage can harm a decision: a transaction that does not
    connect, does not parse or lacks signatures is skipped and named, never adopted, and
    never by itself the reason to refuse a request.
    """
    if not isinstance(raw_txs, list):
        return [], ["lineage must be a list of raw transactions (hex)"]
    problems: list[str] = []
    if len(raw_txs) > MAX_LINEAGE:
        problems.append(f"lineage holds {len(raw_txs)} transactions; only the last "
                        f"{MAX_LINEAGE} are read")
        raw_txs = raw_txs[-MAX_LINEAGE:]
    parsed: list[tuple[int, Transaction]] = []
    for i, raw in enumerate(raw_txs):
        try:
            if not isinstance(raw, str):
                raise ValueError(f"expected a hex string, found {type(raw).__name__}")
            parsed.append((i, Transaction.from_string(raw)))
        except Exception as exc:
            problems.append(f"lineage[{i}] does not parse as a transaction: {exc}")
    # Outputs of every transaction given: a tapscript checkpoint's signatures commit to
    # its top-up inputs' previous outputs too (BIP341), so their funding transactions
    # may travel in the lineage.
    prevouts = {
        Outpoint(t.txid().hex(), n): out for _, t in parsed for n, out in enumerate(t.vout)
    }
    adopted: list[Candidate] = []
    # Parents first whatever the order given: repeat until nothing new connects.
    progress = True
    while progress:
        progress = False
        rest: list[tuple[int, Transaction]] = []
        for i, tx in parsed:
            cand, problem, connected = _judge(i, tx, state, records, magic, prevouts)
            if cand is not None:
                adopted.append(cand)
                state = state.with_adopted([cand])
                progress = True
            elif problem is not None:
                problems.append(problem)
            elif not connected:
                rest.append((i, tx))
        parsed = rest
    # What never connected is older history, or a branch this appliance cannot judge.
    if parsed:
        first = parsed[0][1]
        problems.append(
            f"{len(parsed)} lineage transaction(s) connect to no coin this appliance knows "
            f"(e.g. lineage[{parsed[0][0]}] spends "
            f"{Outpoint(first.vin[0].txid.hex(), first.vin[0].vout) if first.vin else 'nothing'})"
        )
    return adopted, problems


def releases(
    raw_txs: list[str], state: JournalState, records: dict[int, EpochRecord], magic: bytes
) -> list[Release]:
    """Own payloads proven never to complete on their coin, from the lineage's evidence.

    Evidence is any lineage transaction spending a coin this appliance signed on, whose
    coin input carries valid signatures (BIP143 ECDSA / BIP340 script path, checked as
    for adoption; fewer than k are enough) by keys of the coin's epoch, with an output 0
    payload other than the own one. Each validator signs one payload per coin, so n - k + 1
    distinct signers of other payloads leave the own payload at most k - 1 signatures from
    validators that follow the rule. A signer counts once however many transactions it
    signed; a payload this appliance saw quorum-signed is never released.
    """
    if not isinstance(raw_txs, list):
        return []
    parsed: list[Transaction] = []
    for raw in raw_txs[-MAX_LINEAGE:]:
        try:
            parsed.append(Transaction.from_string(raw))
        except Exception:
            continue
    prevouts = {
        Outpoint(t.txid().hex(), n): out for t in parsed for n, out in enumerate(t.vout)
    }
    # outpoint -> [(payload hex, txid, signer keys hex)]
    seen: dict[Outpoint, list[tuple[str, str, set[str]]]] = {}
    for tx in parsed:
        try:
            if not tx.vin or len(tx.vout) < 2:
                continue
            op = Outpoint(tx.vin[0].txid.hex(), tx.vin[0].vout)
            coin = state.known_coin(op)
            if coin is None or coin.epoch not in records:
                continue
            spends = state.spends_of(op)
            own = {e.payload for e in spends if e.kind == "signed"}
            if not own - {e.payload for e in spends if state.is_proven(e)}:
                continue  # nothing of this appliance's own on the coin could be released
            ms = multisig_for(records[coin.epoch])
            keys = {k.sec().hex() for k in quorum_signers(tx, coin, ms, prevouts)}
            if not keys:
                continue
            payload = Payload.from_script(tx.vout[0].script_pubkey.data, magic)
            seen.setdefault(op, []).append((payload.encode().hex(), tx.txid().hex(), keys))
        except Exception:  # evidence that does not check is no evidence
            continue
    out: list[Release] = []
    for op, found in seen.items():
        coin = state.known_coin(op)
        assert coin is not None
        ms = multisig_for(records[coin.epoch])
        needed = len(ms.keys) - ms.threshold + 1
        own = {e.payload for e in state.spends_of(op) if e.kind == "signed"}
        proven = {e.payload for e in state.spends_of(op) if state.is_proven(e)}
        for p in sorted(own - proven):
            txids = sorted({t for q, t, _ in found if q != p})
            signers = sorted(set().union(*(ks for q, _, ks in found if q != p)))
            if len(signers) >= needed:
                out.append(Release(op, p, tuple(txids), tuple(signers)))
    return out


def _judge(
    i: int,
    tx: Transaction,
    state: JournalState,
    records: dict[int, EpochRecord],
    magic: bytes,
    prevouts: dict[Outpoint, TransactionOutput] | None = None,
) -> tuple[Candidate | None, str | None, bool]:
    """(candidate, problem, connected) for one lineage transaction."""
    where = f"lineage[{i}]"
    try:
        txid = tx.txid().hex()
        known = state.by_txid(txid)
        if known is not None and state.is_proven(known):
            return None, None, True
        if not tx.vin or len(tx.vout) < 2:
            return None, f"{where} ({txid}) is not a checkpoint transaction", True
        outpoint = Outpoint(tx.vin[0].txid.hex(), tx.vin[0].vout)
        coin = state.known_coin(outpoint)
        if coin is None:
            return None, None, False
        record = records.get(coin.epoch)
        if record is None:
            return None, f"{where} ({txid}): no certified record for epoch {coin.epoch}", True
        ms = multisig_for(record)
        signers = quorum_signers(tx, coin, ms, prevouts)
        if len(signers) < ms.threshold:
            missing = [
                str(Outpoint(t.txid.hex(), t.vout))
                for t in tx.vin[1:]
                if Outpoint(t.txid.hex(), t.vout) not in (prevouts or {})
            ]
            hint = (
                " (the previous transactions of its top-up inputs "
                f"{', '.join(missing)} are not in the lineage)"
                if ms.is_taproot and missing
                else ""
            )
            return None, (
                f"{where} ({txid}) carries {len(signers)} valid signature(s) of epoch "
                f"{coin.epoch}'s keys, {ms.threshold} needed{hint}"
            ), True
        payload = Payload.from_script(tx.vout[0].script_pubkey.data, magic)
        if payload.epoch != coin.epoch:
            return None, (
                f"{where} ({txid}): payload epoch {payload.epoch} on an epoch "
                f"{coin.epoch} coin"
            ), True
        parent = state.created_by(outpoint) or state.by_txid(outpoint.txid)
        if parent is not None and (payload.epoch, payload.round) <= (parent.epoch, parent.round):
            return None, (
                f"{where} ({txid}): epoch {payload.epoch} round {payload.round} does not "
                f"advance on the coin's epoch {parent.epoch} round {parent.round}"
            ), True
        dest_epoch = paid_epoch(tx.vout[1].script_pubkey, coin.epoch, records)
        if dest_epoch is None:
            return None, f"{where} ({txid}) pays the coin to an unknown script", True
    except Exception as exc:  # a lineage entry must never break a decision
        return None, f"{where}: {type(exc).__name__}: {exc}", True
    return Candidate(
        txid=txid,
        epoch=payload.epoch,
        round=payload.round,
        payload=payload.encode().hex(),
        input=outpoint,
        input_value=coin.value,
        coin_value=tx.vout[1].value,
        dest_epoch=dest_epoch,
        fee=max(coin.value - sum(o.value for o in tx.vout), 0),
        handover=dest_epoch != coin.epoch,
    ), None, True
