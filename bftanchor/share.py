"""Key shares and the deployment draft: how N operators agree on epoch 0 without code.

Each operator's appliance writes a *share* (its validator id, BFT public key, and its
BIP48 account key for one epoch with the device that holds it); a coordinator
collects N shares into epoch 0's record and a *draft* deployment, which becomes the
deployment file once the genesis coin is funded and confirmed. Everything here is
pure format and checking, shared by the appliance (which writes shares) and the node
side (which reads them), so both refuse the same inputs for the same reasons.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from embit.descriptor.arguments import Key

from bftanchor.epoch import HARDENED, EpochRecord, Validator, threshold_for
from bftanchor.errors import CheckpointError
from bftanchor.network import coin_type, is_mainnet, network

SHARE_FORMAT = "bft-anchor/share/1"
DRAFT_FORMAT = "bft-anchor/deployment-draft/1"
DEFAULT_MAGIC = b"BFTA"

# What each script type needs: its BIP48 script-type path element and the largest n
# consensus and standardness let it spend. A new script type is one more entry.
SCRIPT_TYPES: dict[str, dict[str, int]] = {
    "wsh-sortedmulti": {"bip48_type": 2, "max_n": 20},
    # bftanchor/tapscript.py: one sortedmulti_a leaf, n <= 999 (the consensus stack limit).
    "tr-sortedmulti_a": {"bip48_type": 3, "max_n": 999},
}


class ShareError(ValueError):
    """A share, draft or deployment input is malformed, foreign or inconsistent."""


def wallet_fingerprint(descriptor: str) -> str:
    """What operators compare out of band: SHA256(descriptor), first 8 hex, as 'ABCD 1234'."""
    digest = hashlib.sha256(descriptor.encode()).hexdigest()[:8].upper()
    return f"{digest[:4]} {digest[4:]}"


def same_fingerprint(typed: str, expected: str) -> bool:
    def norm(s: str) -> str:
        return "".join(s.split()).upper()

    return norm(typed) == norm(expected)


def _xpub_version_ok(pow_key: str, chain: str) -> bool:
    """A share's key must be encoded for the chain's kind (xpub on mainnet, tpub otherwise)."""
    text = pow_key.split("]", 1)[-1]
    return text.startswith("xpub") if is_mainnet(chain) else text.startswith("tpub")


def check_pow_key(pow_key: str, chain: str, epoch: int, script: str = "wsh-sortedmulti") -> Key:
    """Parse [fingerprint/48h/<coin>h/<epoch>h/<type>h]xpub and check it fits the chain."""
    try:
        key = Key.from_string(pow_key)
    except Exception as exc:
        raise ShareError(f"pow_key does not parse as [fingerprint/path]xpub: {exc}") from None
    if key.origin is None or not key.is_extended or key.is_private:
        raise ShareError("pow_key must be a public [fingerprint/path]xpub")
    bip48_type = SCRIPT_TYPES[script]["bip48_type"]
    want = [48 + HARDENED, coin_type(chain) + HARDENED, epoch + HARDENED, bip48_type + HARDENED]
    if list(key.origin.derivation) != want:
        got = "/".join(
            f"{i - HARDENED}h" if i >= HARDENED else str(i) for i in key.origin.derivation
        )
        raise ShareError(
            f"pow_key path m/{got} is not m/48h/{coin_type(chain)}h/{epoch}h/{bip48_type}h "
            f"(chain {chain}, epoch {epoch}, {script})"
        )
    if not _xpub_version_ok(pow_key, chain):
        raise ShareError(
            f"pow_key is encoded for the other kind of network than {chain} "
            f"({'xpub' if is_mainnet(chain) else 'tpub'} expected)"
        )
    return key


def parse_bft_pubkey(value: Any) -> bytes:
    """A validator's BFT public key from hex: 33-byte compressed, on the curve."""
    try:
        raw = bytes.fromhex(value)
    except (TypeError, ValueError):
        raise ShareError("bft_pubkey is not hex") from None
    if len(raw) != 33 or raw[0] not in (2, 3):
        raise ShareError("bft_pubkey must be a 33-byte compressed public key (66 hex)")
    from embit.ec import PublicKey

    try:
        PublicKey.parse(raw)
    except Exception:
        raise ShareError("bft_pubkey is not a point on secp256k1") from None
    return raw


@dataclass(frozen=True)
class KeyShare:
    """One validator's contribution to one epoch's record."""

    chain: str
    epoch: int
    validator_id: str
    bft_pubkey: bytes
    pow_key: str
    script: str = "wsh-sortedmulti"
    device: dict[str, Any] = field(default_factory=dict)

    @property
    def fingerprint(self) -> str:
        return self.pow_key[1:9]

    def to_json(self) -> dict[str, Any]:
        return {
            "format": SHARE_FORMAT,
            "chain": self.chain,
            "epoch": self.epoch,
            "script": self.script,
            "validator_id": self.validator_id,
            "bft_pubkey": self.bft_pubkey.hex(),
            "pow_key": self.pow_key,
            "device": self.device,
        }

    def validator(self) -> Validator:
        return Validator(self.validator_id, self.bft_pubkey, self.pow_key)

    @classmethod
    def from_json(cls, data: Any) -> KeyShare:
        if not isinstance(data, dict):
            raise ShareError("a share must be a JSON object")
        if data.get("format") != SHARE_FORMAT:
            raise ShareError(f"not a key share (format is {data.get('format')!r}, "
                             f"expected {SHARE_FORMAT!r})")
        chain = data.get("chain")
        try:
            network(str(chain))
        except ValueError as exc:
            raise ShareError(str(exc)) from None
        epoch = data.get("epoch")
        if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
            raise ShareError("epoch must be an unsigned integer")
        script = data.get("script", "wsh-sortedmulti")
        if script not in SCRIPT_TYPES:
            raise ShareError(f"script {script!r} is not one of {', '.join(SCRIPT_TYPES)}")
        vid = data.get("validator_id")
        if not isinstance(vid, str) or not vid.strip() or len(vid) > 64:
            raise ShareError("validator_id must be a non-empty string of at most 64 characters")
        pow_key = data.get("pow_key")
        if not isinstance(pow_key, str):
            raise ShareError("pow_key must be a string")
        check_pow_key(pow_key, str(chain), epoch, script)
        device = data.get("device", {})
        if not isinstance(device, dict):
            raise ShareError("device must be an object")
        fp = device.get("fingerprint")
        if fp is not None and str(fp).lower() != pow_key[1:9].lower():
            raise ShareError(f"device fingerprint {fp} is not the pow_key's ({pow_key[1:9]})")
        return cls(str(chain), epoch, vid, parse_bft_pubkey(data.get("bft_pubkey")), pow_key,
                   script, device)

    @classmethod
    def load(cls, path: Path) -> KeyShare:
        return _load_json(path, "share", cls.from_json)

    def save(self, path: Path) -> None:
        write_new(Path(path), json.dumps(self.to_json(), indent=1, sort_keys=True) + "\n")


_T = TypeVar("_T")


def _load_json(path: Path, what: str, from_json: Callable[[Any], _T]) -> _T:
    """Read and parse a `what` file; every problem is one ShareError naming it."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ShareError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ShareError(f"{what} {path} is not text") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ShareError(f"{what} {path} is not JSON: {exc}") from None
    try:
        return from_json(data)
    except ShareError as exc:
        raise ShareError(f"{what} {path}: {exc}") from None


def write_new(path: Path, text: str) -> None:
    """Write a file that must not exist yet, unless it already holds exactly this text."""
    if path.exists():
        if path.read_text() == text:
            return
        raise ShareError(f"{path} exists with other content; not overwriting it")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def build_epoch0(
    shares: list[KeyShare],
    chain: str,
    epoch_length: int,
    start_round: int = 0,
    script: str = "wsh-sortedmulti",
    device_max_n: dict[str, int | None] | None = None,
) -> EpochRecord:
    """Epoch 0's record from N shares, refusing what could not be signed or spent."""
    return build_record(shares, chain, 0, start_round, epoch_length, script, device_max_n)


def build_record(
    shares: list[KeyShare],
    chain: str,
    epoch: int,
    start_round: int,
    epoch_length: int,
    script: str = "wsh-sortedmulti",
    device_max_n: dict[str, int | None] | None = None,
) -> EpochRecord:
    """An epoch's record (without certificate) from its validators' shares for that epoch."""
    if not shares:
        raise ShareError("no shares given")
    if script not in SCRIPT_TYPES:
        raise ShareError(f"script {script!r} is not one of {', '.join(SCRIPT_TYPES)}")
    if epoch_length < 1:
        raise ShareError("the epoch length must be at least 1 round")
    for s in shares:
        if s.chain != chain:
            raise ShareError(f"share of {s.validator_id} is for chain {s.chain}, not {chain}")
        if s.epoch != epoch:
            raise ShareError(f"share of {s.validator_id} is for epoch {s.epoch}, not {epoch}")
        if s.script != script:
            raise ShareError(f"share of {s.validator_id} is for {s.script}, not {script}")
    seen: dict[str, str] = {}
    for label, values in (
        ("validator id", [s.validator_id for s in shares]),
        ("BFT public key", [s.bft_pubkey.hex() for s in shares]),
        ("PoW key", [s.pow_key.split("]", 1)[1] for s in shares]),
        ("device fingerprint", [s.fingerprint for s in shares]),
    ):
        seen.clear()
        for s, v in zip(shares, values, strict=True):
            if v in seen:
                raise ShareError(
                    f"duplicate {label}: the shares of {seen[v]} and {s.validator_id} "
                    f"both have {v[:20]}"
                )
            seen[v] = s.validator_id
    n = len(shares)
    limit = SCRIPT_TYPES[script]["max_n"]
    if n > limit:
        raise ShareError(f"n = {n} validators: {script} allows at most {limit} keys")
    for s in shares:
        cap = (device_max_n or {}).get(s.validator_id, limit)
        if cap is None:
            raise ShareError(
                f"the device of {s.validator_id} ({s.device.get('model')}) cannot sign {script}"
            )
        if n > cap:
            raise ShareError(
                f"n = {n} validators: the device of {s.validator_id} "
                f"({s.device.get('model')} {s.device.get('firmware')}) signs {script} "
                f"of at most {cap} keys"
            )
    record = EpochRecord(
        epoch=epoch,
        start_round=start_round,
        end_round=start_round + epoch_length - 1,
        threshold=threshold_for(n),
        validators=tuple(s.validator() for s in shares),
        script=script,
    )
    try:
        record.validate()
    except CheckpointError as exc:
        raise ShareError(f"epoch {epoch} record: {exc}") from None
    return record


@dataclass(frozen=True)
class Draft:
    """A deployment without its genesis coin yet."""

    chain: str
    magic: bytes
    handover_window: int
    epoch0: EpochRecord

    def to_json(self) -> dict[str, Any]:
        return {
            "format": DRAFT_FORMAT,
            "chain": self.chain,
            "magic": self.magic.hex(),
            "handover_window": self.handover_window,
            "epoch0": self.epoch0.to_json(),
        }

    @classmethod
    def from_json(cls, data: Any) -> Draft:
        if not isinstance(data, dict) or data.get("format") != DRAFT_FORMAT:
            raise ShareError(f"not a deployment draft (format {DRAFT_FORMAT!r} expected)")
        chain = str(data.get("chain"))
        try:
            network(chain)
            magic = bytes.fromhex(str(data.get("magic")))
        except ValueError as exc:
            raise ShareError(str(exc)) from None
        if len(magic) != 4:
            raise ShareError("magic must be 4 bytes (8 hex digits)")
        window = data.get("handover_window")
        if not isinstance(window, int) or isinstance(window, bool) or window < 1:
            raise ShareError("handover_window must be a positive integer")
        try:
            record = EpochRecord.from_json(data.get("epoch0"))
        except CheckpointError as exc:
            raise ShareError(f"epoch0: {exc}") from None
        if record.epoch != 0 or record.certificate:
            raise ShareError("epoch0 must be epoch 0 with an empty certificate")
        if window >= record.end_round - record.start_round + 1:
            raise ShareError("handover_window must be shorter than epoch 0")
        for v in record.validators:
            try:
                check_pow_key(v.pow_key, chain, 0)
            except ShareError as exc:
                raise ShareError(f"epoch0 validator {v.id}: {exc}") from None
        return cls(chain, magic, window, record)

    @classmethod
    def load(cls, path: Path) -> Draft:
        return _load_json(path, "deployment draft", cls.from_json)
