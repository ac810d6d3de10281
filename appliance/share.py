"""The appliance's part of a bootstrap: write its key share, install the deployment.

A share is read from the device through HWI (or from the software seed), so the key
the coordinator receives is the one the device will sign with. Installing checks the
deployment against this appliance (its validator id, its key, the wallet fingerprint
the operator received out of band), registers epoch 0's multisig on the device, and
only then puts the file where the config says; it never replaces a different one.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from appliance.config import ApplianceConfig
from appliance.runtime import make_signer
from appliance.signers.base import Signer, SignerError
from bftanchor.bftsig import pubkey_from_secret
from bftanchor.deployment import Deployment, DeploymentError
from bftanchor.descriptor import EpochMultisig
from bftanchor.errors import CheckpointError
from bftanchor.network import coin_type, network
from bftanchor.share import (
    SCRIPT_TYPES,
    KeyShare,
    ShareError,
    parse_bft_pubkey,
    same_fingerprint,
    wallet_fingerprint,
)

JADE_WSH_VARIANT = "wsh(multi(k))"


def device_info(signer: Signer) -> dict[str, Any]:
    """Model and firmware as HWI sees them; {"type": "software"} for a seed file."""
    from appliance.signers.hwi import HWISigner

    if not isinstance(signer, HWISigner):
        return {"type": "software", "model": "software", "firmware": None,
                "fingerprint": signer.fingerprint.hex()}
    with signer._client() as client:  # one connection: the same device HWI signs with
        firmware = getattr(client, "fw_version", None)
        model = signer.device_type or type(client).__name__.removesuffix("Client").lower()
        jade = getattr(client, "jade", None)
        if jade is not None:
            info = jade.get_version_info()
            if info.get("BOARD_TYPE") == "EMULATOR":
                model = "jade_simulator"
    return {"type": signer.device_type, "model": model,
            "firmware": str(firmware) if firmware is not None else None,
            "fingerprint": signer.fingerprint.hex()}


def bft_pubkey_of(pubkey_hex: str | None, key_file: Path | None) -> bytes:
    if key_file is not None:
        try:
            secret = bytes.fromhex(Path(key_file).read_text().strip())
        except OSError as exc:
            raise ShareError(f"cannot read BFT key file {key_file}: {exc.strerror}") from None
        except ValueError:
            raise ShareError(f"BFT key file {key_file} does not hold a hex secret") from None
        if len(secret) != 32:
            raise ShareError(f"BFT key file {key_file}: the secret must be 32 bytes")
        return pubkey_from_secret(secret)
    if not pubkey_hex:
        raise ShareError("give the validator's BFT public key (--bft-pubkey HEX)")
    return parse_bft_pubkey(pubkey_hex)


def make_share(
    config: ApplianceConfig,
    chain: str,
    epoch: int,
    bft_pubkey: bytes,
    script: str = "wsh-sortedmulti",
) -> KeyShare:
    network(chain)
    if not config.validator_id:
        raise ShareError(f"{config.path} names no validator_id")
    signer = make_signer(config, coin_type(chain))
    cannot = getattr(signer, "cannot_sign_script", None)
    if cannot is not None:
        reasons = cannot(script)
        if reasons:
            raise ShareError(reasons[0])
    bip48_type = SCRIPT_TYPES[script]["bip48_type"]
    share = KeyShare(chain, epoch, config.validator_id, bft_pubkey,
                     signer.pow_key(epoch, bip48_type), script, device_info(signer))
    return KeyShare.from_json(share.to_json())  # the same checks the coordinator runs


def registered_on_device(signer: Signer, multisig: EpochMultisig) -> bool | None:
    """Whether the device holds the epoch's multisig registration (None: cannot tell), under
    the signer's name for it or under HWI's hash name (a registration made by HWI itself)."""
    from appliance.signers.hwi import HWISigner

    if not isinstance(signer, HWISigner):
        return None
    from hwilib.devices.jade import JadeClient

    with signer._client() as client:
        jade = getattr(client, "jade", None)
        if jade is None:
            return None
        origins = [(k.fingerprint, list(k.path[:-2])) for k in multisig.keys]
        hwi_name = JadeClient._get_multisig_name(JADE_WSH_VARIANT, multisig.threshold, origins)
        names = {hwi_name, signer.wallet_name(multisig.epoch)}
        return bool(names & set(jade.get_registered_multisigs() or {}))


def install_deployment(config: ApplianceConfig, source: Path, typed_fingerprint: str) -> str:
    """Check, register and install a deployment file; return what the operator should see."""
    try:
        deployment = Deployment.load(source)
    except DeploymentError as exc:
        raise ShareError(str(exc)) from None
    rec = deployment.epoch0
    try:
        ms = EpochMultisig(rec)
    except CheckpointError as exc:
        raise ShareError(f"deployment {source}: {exc}") from None
    expected = wallet_fingerprint(ms.descriptor())
    if not same_fingerprint(typed_fingerprint, expected):
        raise ShareError(
            f"deployment {source}: wallet fingerprint is {expected}, not {typed_fingerprint!r} "
            "as received out of band: do not install it"
        )
    try:
        rec.index_of(config.validator_id)
    except KeyError:
        raise ShareError(
            f"deployment {source}: validator {config.validator_id!r} is not in epoch 0"
        ) from None
    signer = make_signer(config, rec.coin_type, deployment)
    mine = rec.validators[rec.index_of(config.validator_id)].pow_key
    if signer.pow_key(0) != mine:
        raise ShareError(
            f"deployment {source}: epoch 0 names {mine[:18]}... for {config.validator_id}, "
            f"but this appliance's device holds {signer.pow_key(0)[:18]}..."
        )
    address = ms.address(network(deployment.chain))
    register = getattr(signer, "register", None)
    if register is not None:
        try:
            shown = register(ms)
        except SignerError as exc:
            raise ShareError(f"registering the multisig: {exc}") from None
        # register() already refused a device whose address is not the epoch's script; a
        # device that knows only Bitcoin shows the same script with Bitcoin's prefix.
        if shown is not None and shown != address:
            address = f"{address} (the device shows {shown}, the same script)"
    dest = config.deployment
    if dest.exists():
        if dest.read_bytes() == Path(source).read_bytes():
            return f"already installed: {dest}"
        try:
            same = json.loads(dest.read_text()) == json.loads(Path(source).read_text())
        except (OSError, ValueError):
            same = False
        if not same:
            raise ShareError(
                f"{dest} already holds another deployment; an appliance serves one deployment "
                "(make a new appliance directory for a new one)"
            )
        return f"already installed: {dest}"
    if Path(source).resolve() != dest.resolve():
        tmp = dest.with_name(dest.name + ".tmp")
        shutil.copyfile(source, tmp)
        tmp.replace(dest)
    return (f"installed {dest}: epoch 0 {rec.threshold}-of-{rec.n}, address {address}, "
            f"wallet fingerprint {expected}; the multisig is registered on the device")
