"""Errors of the checkpoint language.

Every malformed input has its own class so that a refusal can name exactly what
was wrong; callers that only care that *something* was wrong catch the base.
"""


class CheckpointError(ValueError):
    """Base of every format or verification error in the checkpoint language."""


class PayloadError(CheckpointError):
    """The OP_RETURN payload or its script is malformed."""


class QCError(CheckpointError):
    """A quorum certificate is malformed or does not verify."""


class QCFormatError(QCError):
    """The QC JSON lacks a field or has one of the wrong type or size."""


class VoteInfoHashMismatch(QCError):
    """ledger_commit_info.vote_info_hash is not the hash of vote_info."""


class NullCommitState(QCError):
    """A QC with an all-zero commit_state_id commits nothing and is never anchored."""


class UnknownSigner(QCError):
    """A signature is by someone who is not a member of the epoch's set."""


class DuplicateSigner(QCError):
    """The same validator appears twice (possible only in hand-built JSON)."""


class HighSSignature(QCError):
    """A signature is valid only in its malleable high-s form."""


class BadSignature(QCError):
    """A signature does not verify against the signer's key."""


class BelowThreshold(QCError):
    """Fewer valid signatures than the epoch's threshold."""


class EpochMismatch(QCError):
    """The QC's epoch is not the epoch of the record it is checked against."""


class RoundOutsideEpoch(QCError):
    """The QC's round is not within its epoch record's [start_round, end_round]."""


class EpochRecordError(CheckpointError):
    """An epoch record is malformed, inconsistent or not certified."""


class DescriptorError(CheckpointError):
    """The epoch's multisig cannot be built safely (e.g. n > 20 for CHECKMULTISIG)."""


class TemplateError(CheckpointError):
    """A checkpoint transaction cannot be built or finalized."""
