"""The checkpoint language that both halves share: payload, QC, epoch records,
multisig descriptors and the transaction template. Imports neither half."""

from bftanchor.descriptor import EpochMultisig
from bftanchor.epoch import (
    EpochRecord,
    Validator,
    canonical_json,
    threshold_for,
    verify_certificate,
)
from bftanchor.errors import CheckpointError
from bftanchor.payload import Payload
from bftanchor.qc import QC, verify_qc
from bftanchor.template import Coin, Outpoint, build_checkpoint_psbt, finalize

__all__ = [
    "QC",
    "CheckpointError",
    "Coin",
    "EpochMultisig",
    "EpochRecord",
    "Outpoint",
    "Payload",
    "Validator",
    "build_checkpoint_psbt",
    "canonical_json",
    "finalize",
    "threshold_for",
    "verify_certificate",
    "verify_qc",
]
