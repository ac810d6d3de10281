"""Fee top-ups from the operator's single-signature fee wallet (a PoW node wallet).

When the checkpoint coin runs low, the initiator adds fee-wallet coins as extra
inputs; the appliances sign only the coin's input, and the fee wallet signs its own.
"""

from __future__ import annotations

from embit.psbt import PSBT
from embit.script import Script
from embit.transaction import Transaction, TransactionOutput

from anchornode.pow.rpc import PowRpc, RpcError, to_sat
from bftanchor.template import Outpoint, TopUp


class FeeWalletError(Exception):
    pass


def select_topup(wallet: PowRpc, amount: int, max_fee: int) -> TopUp:
    """Confirmed P2WPKH coins covering amount + max_fee, largest first, each with its
    full previous transaction (the appliances refuse a top-up without it)."""
    need = amount + max_fee
    try:
        utxos = [u for u in wallet.listunspent(1)
                 if u.get("spendable", True) and u["scriptPubKey"].startswith("0014")]
    except RpcError as exc:
        raise FeeWalletError(f"fee wallet unavailable: {exc}") from exc
    utxos.sort(key=lambda u: to_sat(u["amount"]), reverse=True)
    chosen, total = [], 0
    for u in utxos:
        chosen.append(u)
        total += to_sat(u["amount"])
        if total >= need:
            break
    if total < need:
        raise FeeWalletError(f"fee wallet holds {total} sat in confirmed P2WPKH coins, "
                             f"{need} needed")
    try:
        change = wallet.getrawchangeaddress("bech32")
        change_spk = wallet.getaddressinfo(change)["scriptPubKey"]
        # Every appliance proves a top-up's amount from its full previous transaction.
        prev_txs = tuple(
            Transaction.from_string(wallet.gettransaction(txid)["hex"])
            for txid in dict.fromkeys(u["txid"] for u in chosen)
        )
    except RpcError as exc:
        raise FeeWalletError(f"fee wallet unavailable: {exc}") from exc
    return TopUp(
        inputs=tuple(
            (Outpoint(u["txid"], int(u["vout"])),
             TransactionOutput(to_sat(u["amount"]), Script(bytes.fromhex(u["scriptPubKey"]))))
            for u in chosen
        ),
        amount=amount,
        change_script=Script(bytes.fromhex(change_spk)),
        prev_txs=prev_txs,
    )


def sign_topups(wallet: PowRpc, psbt: PSBT) -> PSBT:
    """Have the fee wallet sign and finalize its inputs; input 0 is left as it is."""
    try:
        out = wallet.walletprocesspsbt(psbt.to_string(), True, "ALL")
    except RpcError as exc:
        raise FeeWalletError(f"fee wallet could not sign: {exc}") from exc
    signed = PSBT.from_string(out["psbt"])
    result = PSBT.parse(psbt.serialize())
    for i in range(1, len(result.inputs)):
        wit = signed.inputs[i].final_scriptwitness
        if wit is None:
            raise FeeWalletError(f"fee wallet did not finalize top-up input {i}")
        result.inputs[i].final_scriptwitness = wit
    return result
