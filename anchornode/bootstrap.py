"""`bft-anchor deploy`: the coordinator's commands, from N key shares to a deployment file.

draft    N shares -> epoch 0's record and a deployment draft; prints the multisig's
         descriptor, address and wallet fingerprint for every operator to check.
genesis  funds epoch 0's multisig (from a named wallet of the PoW node, or an outpoint
         the operator supplies), checks the coin on the PoW node (script, value,
         confirmations) and writes the final deployment file.
show     what a draft or deployment commits to (descriptor, address, fingerprint).
epochs   the epochs file an auditor reads, fetched from the QC source and verified
         back to the deployment's epoch 0.
keygen   a BFT secret key file for a test deployment (a real validator uses its
         BFT chain's key); prints the public key a share needs.

Exit status: 0 done, 1 the job could not finish (coin not yet confirmed), 2 bad usage
or a malformed, foreign or inconsistent input (one line on standard error).
"""

from __future__ import annotations

import argparse
import json
import logging
import secrets
import sys
import time
from pathlib import Path
from typing import Any

from anchornode.pow.rpc import PowRpc, RpcError, to_coin, to_sat, url_with_auth
from bftanchor.bftsig import pubkey_from_secret
from bftanchor.deployment import Deployment, DeploymentError
from bftanchor.descriptor import EpochMultisig
from bftanchor.errors import CheckpointError
from bftanchor.network import network
from bftanchor.share import (
    DEFAULT_MAGIC,
    SCRIPT_TYPES,
    Draft,
    KeyShare,
    ShareError,
    build_epoch0,
    wallet_fingerprint,
    write_new,
)
from bftanchor.template import Coin, Outpoint
from bftanchor.usage import ArgumentParser

log = logging.getLogger("bft_anchor.bootstrap")
EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2

# getblockchaininfo's "chain" for each deployment chain's network.
RPC_CHAIN = {"main": "main", "test": "test", "signet": "signet", "regtest": "regtest"}


def expected_rpc_chain(chain: str) -> tuple[str, str]:
    """(coin, getblockchaininfo chain) a PoW node serving `chain` must report."""
    coin, net = chain.split("-", 1)
    return coin, RPC_CHAIN[net]


def device_caps(shares: list[KeyShare], script: str) -> dict[str, int | None]:
    """The largest n each share's device can sign, from the firmware profiles."""
    from appliance.devices.profiles import match_profile

    caps: dict[str, int | None] = {}
    for s in shares:
        dtype = s.device.get("type")
        if not dtype or dtype == "software":
            continue
        profile = match_profile(str(dtype), s.device.get("model"), s.device.get("firmware"))
        if profile is None:
            log.warning("no firmware profile for %s's device %s %s; not capping n", s.validator_id,
                        s.device.get("model"), s.device.get("firmware"))
            continue
        caps[s.validator_id] = profile.max_n(script)
    return caps


def check_devices(shares: list[KeyShare], record: Any) -> None:
    """Refuse a record some operator's device cannot sign (firmware too old, script type
    unsupported, n too large), with the device's own reasons."""
    from appliance.devices.capability import cannot_sign
    from appliance.devices.profiles import match_profile

    for s in shares:
        dtype = s.device.get("type")
        if not dtype or dtype == "software":
            continue
        firmware = s.device.get("firmware")
        profile = match_profile(str(dtype), s.device.get("model"), firmware)
        if profile is None:
            continue  # warned by device_caps: nothing known to check against
        reasons = cannot_sign(record, s.fingerprint, profile=profile, firmware=firmware)
        if reasons:
            raise ShareError(f"the device of {s.validator_id} ({s.device.get('model')} "
                             f"{firmware}) cannot sign epoch 0: {'; '.join(reasons)}")


def summary(chain: str, record: Any) -> dict[str, Any]:
    ms = EpochMultisig(record)
    return {
        "descriptor": ms.descriptor(),
        "address": ms.address(network(chain)),
        "wallet_fingerprint": wallet_fingerprint(ms.descriptor()),
        "threshold": record.threshold,
        "n": record.n,
        "rounds": [record.start_round, record.end_round],
    }


def _print_summary(s: dict[str, Any]) -> None:
    print(f"epoch 0: {s['threshold']}-of-{s['n']}, rounds {s['rounds'][0]}..{s['rounds'][1]}")
    print(f"descriptor: {s['descriptor']}")
    print(f"address: {s['address']}")
    print(f"wallet fingerprint: {s['wallet_fingerprint']}")


def cmd_draft(args: argparse.Namespace) -> int:
    try:
        network(args.chain)
        magic = args.magic.encode() if len(args.magic) == 4 else bytes.fromhex(args.magic)
        if len(magic) != 4:
            raise ShareError("--magic must be 4 ASCII characters or 8 hex digits")
        if args.handover_window < 1 or args.handover_window >= args.epoch_length:
            raise ShareError("--handover-window must be at least 1 and less than --epoch-length")
        shares = [KeyShare.load(p) for p in args.share]
        record = build_epoch0(shares, args.chain, args.epoch_length, args.start_round,
                              args.script, device_caps(shares, args.script))
        check_devices(shares, record)
        draft = Draft(args.chain, magic, args.handover_window, record)
        s = summary(args.chain, record)
        write_draft(args.out, draft)
    except (ShareError, ValueError) as exc:
        print(f"bft-anchor deploy draft: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"wrote {args.out}")
    _print_summary(s)
    print("next: send every operator the draft; each checks the address and fingerprint "
          "out of band, then fund it with `bft-anchor deploy genesis`")
    return EXIT_OK


def _rpc(args: argparse.Namespace) -> PowRpc:
    try:
        return PowRpc(url_with_auth(args.rpc, args.rpc_user, args.rpc_password, args.rpc_cookie))
    except OSError as exc:
        raise ShareError(f"cannot read RPC cookie {args.rpc_cookie}: {exc.strerror}") from None
    except ValueError as exc:
        raise ShareError(f"RPC cookie {args.rpc_cookie} is malformed: {exc}") from None


def check_pow_node(rpc: PowRpc, chain: str) -> None:
    coin, want = expected_rpc_chain(chain)
    info = rpc.getblockchaininfo()
    sub = rpc.getnetworkinfo().get("subversion", "")
    is_ltc = "litecoin" in sub.lower()
    if info.get("chain") != want or (coin == "litecoin") != is_ltc:
        raise ShareError(f"the PoW node ({sub} on {info.get('chain')}) does not serve {chain}")


def check_coin(rpc: PowRpc, outpoint: Outpoint, ms: EpochMultisig, amount: int | None) -> dict:
    """The outpoint's output, checked to be epoch 0's script, unspent and of the amount."""
    try:
        tx = rpc.getrawtransaction(outpoint.txid, True)
    except RpcError as exc:
        raise ShareError(f"outpoint {outpoint}: the PoW node does not know the transaction "
                         f"({exc}); is it broadcast, and does the node run -txindex?") from None
    vouts = tx.get("vout", [])
    if outpoint.vout >= len(vouts):
        raise ShareError(f"outpoint {outpoint}: the transaction has {len(vouts)} outputs")
    out = vouts[outpoint.vout]
    if out["scriptPubKey"]["hex"] != ms.script_pubkey.data.hex():
        raise ShareError(f"outpoint {outpoint} does not pay epoch 0's multisig (foreign coin)")
    value = to_sat(out["value"])
    if amount is not None and value != amount:
        raise ShareError(f"outpoint {outpoint} holds {value} sat, not the {amount} sat agreed")
    if rpc.gettxout(outpoint.txid, outpoint.vout, True) is None:
        raise ShareError(f"outpoint {outpoint} is already spent")
    return {"value": value, "confirmations": int(tx.get("confirmations", 0))}


def fund_from_wallet(
    rpc: PowRpc, wallet: str, address: str, script_hex: str, amount: int
) -> Outpoint:
    """walletcreatefundedpsbt -> walletprocesspsbt (the wallet signs) -> broadcast."""
    w = rpc.wallet(wallet)
    created = w.walletcreatefundedpsbt([], [{address: float(to_coin(amount))}], 0,
                                       {"replaceable": True})
    processed = w.walletprocesspsbt(created["psbt"], True)
    final = w.finalizepsbt(processed["psbt"])
    if not final.get("complete"):
        raise ShareError(f"wallet {wallet} could not sign the funding transaction")
    txid = rpc.sendrawtransaction(final["hex"])
    tx = rpc.decoderawtransaction(final["hex"])
    vout = next(o["n"] for o in tx["vout"] if o["scriptPubKey"]["hex"] == script_hex)
    return Outpoint(txid, int(vout))


def write_deployment(path: Path, draft: Draft, outpoint: Outpoint, value: int) -> Deployment:
    """The final deployment file: the draft plus its checked genesis coin; never overwritten."""
    deployment = Deployment(draft.chain, draft.magic, Coin(outpoint, value, 0), draft.epoch0,
                            draft.handover_window)
    write_new(Path(path), json.dumps(deployment.to_json(), indent=1, sort_keys=True) + "\n")
    return deployment


def write_draft(path: Path, draft: Draft) -> None:
    write_new(Path(path), json.dumps(draft.to_json(), indent=1, sort_keys=True) + "\n")


def cmd_genesis(args: argparse.Namespace) -> int:
    name = "bft-anchor deploy genesis"
    try:
        draft = Draft.load(args.draft)
        ms = EpochMultisig(draft.epoch0)
        address = ms.address(network(draft.chain))
        if args.amount is not None and args.amount <= 0:
            raise ShareError("--amount must be a positive number of satoshis")
        outpoint = None
        if args.outpoint:
            outpoint = Outpoint.parse(args.outpoint)
            if outpoint.vout < 0:
                raise ShareError(f"outpoint {args.outpoint}: negative output index")
        if args.out.exists():
            raise ShareError(f"{args.out} exists; not overwriting a deployment file")
        if outpoint is None and not args.wallet:
            amount = f"{args.amount} sat" if args.amount else "the agreed amount"
            print(f"fund epoch 0's multisig: send {amount} to {address}")
            print(f"then run again with --outpoint TXID:VOUT (wallet fingerprint "
                  f"{wallet_fingerprint(ms.descriptor())})")
            return EXIT_OK
        rpc = _rpc(args)
        check_pow_node(rpc, draft.chain)
        if outpoint is None:
            if args.amount is None:
                raise ShareError("--wallet needs --amount SAT")
            outpoint = fund_from_wallet(rpc, args.wallet, address,
                                            ms.script_pubkey.data.hex(), args.amount)
            print(f"funded {address} with {args.amount} sat: {outpoint}", flush=True)
        coin = check_coin(rpc, outpoint, ms, args.amount)
        deadline = time.monotonic() + args.wait
        while coin["confirmations"] < args.confirmations:
            if time.monotonic() > deadline:
                print(f"{name}: {outpoint} has {coin['confirmations']} of "
                      f"{args.confirmations} confirmations; run again later", file=sys.stderr)
                return EXIT_FAIL
            time.sleep(min(1.0, max(0.2, args.wait / 20)))
            coin = check_coin(rpc, outpoint, ms, args.amount)
        write_deployment(args.out, draft, outpoint, coin["value"])
    except (ShareError, ValueError, CheckpointError) as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except RpcError as exc:
        print(f"{name}: PoW node {args.rpc}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"wrote {args.out}: genesis {outpoint} ({coin['value']} sat, "
          f"{coin['confirmations']} confirmations)")
    print("next: every operator runs `bft-anchor appliance install` with this file and the "
          "wallet fingerprint received out of band")
    return EXIT_OK


def cmd_show(args: argparse.Namespace) -> int:
    try:
        data = json.loads(Path(args.file).read_text())
        if isinstance(data, dict) and "format" in data:
            d = Draft.from_json(data)
            chain, record = d.chain, d.epoch0
        else:
            dep = Deployment.from_json(data)
            chain, record = dep.chain, dep.epoch0
        s = summary(chain, record)
    except OSError as exc:
        print(f"bft-anchor deploy show: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
        return EXIT_USAGE
    except (ValueError, ShareError, DeploymentError, CheckpointError) as exc:
        print(f"bft-anchor deploy show: {args.file}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        print(json.dumps(s, indent=1))
    else:
        _print_summary(s)
    return EXIT_OK


def cmd_epochs(args: argparse.Namespace) -> int:
    """The epochs file an auditor reads, from the QC source, verified back to epoch 0."""
    from anchornode.qcsource import QCSourceError, open_source
    from bftanchor.epoch import verify_chain

    try:
        deployment = Deployment.load(args.deployment)
        records = open_source(args.qc_source).records()
        chain = verify_chain(records, deployment.epoch0)
    except (DeploymentError, QCSourceError, CheckpointError, OSError, ValueError) as exc:
        print(f"bft-anchor deploy epochs: {exc}", file=sys.stderr)
        return EXIT_USAGE
    text = json.dumps([r.to_json() for r in chain], indent=1) + "\n"
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(args.out)
    print(f"wrote {args.out}: epochs {', '.join(str(r.epoch) for r in chain)} "
          "(each certified by the one before, back to the deployment's epoch 0)")
    return EXIT_OK


def cmd_keygen(args: argparse.Namespace) -> int:
    from bftanchor.secretfile import SecretFileError, write_secret

    secret = secrets.token_bytes(32)
    try:
        write_secret(args.out, secret.hex() + "\n")
    except (SecretFileError, OSError) as exc:
        print(f"bft-anchor deploy keygen: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(pubkey_from_secret(secret).hex())
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="bft-anchor deploy", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    d = sub.add_parser("draft", help="epoch 0's record and a deployment draft from N shares")
    d.add_argument("--share", type=Path, action="append", required=True, metavar="FILE",
                   help="a share file (repeat once per validator)")
    d.add_argument("--chain", required=True, help="litecoin-test, bitcoin-signet, ...")
    d.add_argument("--magic", default=DEFAULT_MAGIC.decode(),
                   help="payload magic: 4 ASCII characters or 8 hex digits (default BFTA)")
    d.add_argument("--epoch-length", type=int, required=True, metavar="ROUNDS",
                   help="BFT rounds per epoch")
    d.add_argument("--start-round", type=int, default=0, metavar="ROUND",
                   help="epoch 0's first round (default 0)")
    d.add_argument("--handover-window", type=int, required=True, metavar="ROUNDS",
                   help="rounds before an epoch's end in which the handover is signed")
    d.add_argument("--script", choices=sorted(SCRIPT_TYPES), default="wsh-sortedmulti",
                   help="the coin's script type (default wsh-sortedmulti)")
    d.add_argument("--out", type=Path, default=Path("deployment-draft.json"),
                   help="file to write (default deployment-draft.json)")
    d.set_defaults(func=cmd_draft)
    g = sub.add_parser("genesis", help="fund epoch 0's multisig and write the deployment file")
    g.add_argument("--draft", type=Path, required=True, help="the draft `deploy draft` wrote")
    g.add_argument("--rpc", help="PoW node RPC URL, e.g. http://127.0.0.1:9332")
    g.add_argument("--rpc-cookie", type=Path, help="the node's .cookie file")
    g.add_argument("--rpc-user", help="RPC user name (or --rpc-cookie)")
    g.add_argument("--rpc-password", help="RPC password, with --rpc-user")
    g.add_argument("--amount", type=int, metavar="SAT", help="the coin's value")
    g.add_argument("--wallet", help="fund from this wallet of the PoW node")
    g.add_argument("--outpoint", metavar="TXID:VOUT", help="the funding output, already sent")
    g.add_argument("--confirmations", type=int, default=1,
                   help="confirmations the funding needs (default 1)")
    g.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                   help="wait this long for the confirmations (default: do not wait)")
    g.add_argument("--out", type=Path, default=Path("deployment.json"),
                   help="file to write (default deployment.json)")
    g.set_defaults(func=cmd_genesis)
    s = sub.add_parser("show", help="descriptor, address and wallet fingerprint of a file")
    s.add_argument("file", type=Path, help="a deployment file, draft or share")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(func=cmd_show)
    e = sub.add_parser("epochs", help="the epochs file for the audit, from the QC source")
    e.add_argument("--deployment", type=Path, required=True, help="the deployment file")
    e.add_argument("--qc-source", required=True, help="the BFT node's directory or http URL")
    e.add_argument("--out", type=Path, default=Path("epochs.json"),
                   help="file to write (default epochs.json)")
    e.set_defaults(func=cmd_epochs)
    k = sub.add_parser("keygen", help="a BFT key file for a test deployment")
    k.add_argument("--out", type=Path, default=Path("bft.key"),
                   help="file to write (default bft.key)")
    k.set_defaults(func=cmd_keygen)
    return p


def main(argv: list[str]) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    if getattr(args, "func", None) is cmd_genesis and (args.outpoint or args.wallet) \
            and not args.rpc:
        print("bft-anchor deploy genesis: --rpc is needed to check the coin", file=sys.stderr)
        return EXIT_USAGE
    return args.func(args)
