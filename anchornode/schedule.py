"""When a checkpoint is due: a pure function of what the node sees.

At most one checkpoint per PoW block (only a confirmed coin is spent; the coin input's
BIP68 one-block lock makes consensus enforce it), at least one per epoch, the handover
at the first QC inside the deployment's handover window (end_round - W < r <=
end_round, where no regular checkpoint may fall), and in between every
`interval_blocks` blocks (or `interval_seconds`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ScheduleConfig:
    interval_blocks: int = 2
    interval_seconds: float | None = None
    stuck_after: int = 2
    initiator_timeout: float = 10.0


@dataclass(frozen=True)
class ChainState:
    tip_height: int
    coin_epoch: int
    coin_confirmed: bool
    last_checkpoint_height: int | None  # None: no checkpoint yet (genesis coin)
    last_checkpoint_time: float | None
    epoch_has_checkpoint: bool  # a checkpoint with payload epoch == coin_epoch exists
    last_round: tuple[int, int] | None = None  # (epoch, round) of the last checkpoint


@dataclass(frozen=True)
class Due:
    handover: bool
    reason: str


def due(
    cfg: ScheduleConfig,
    chain: ChainState,
    qc_epoch: int,
    qc_round: int,
    end_round: int,
    next_record_held: bool,
    now: float,
    window: int,
) -> Due | None:
    """A checkpoint that should be made now, or None. `window` is the deployment's
    handover_window W."""
    if not chain.coin_confirmed:
        return None  # one per block: never spend an unconfirmed coin
    if qc_epoch != chain.coin_epoch:
        return None  # the coin has moved on, or the QC belongs to another epoch
    if chain.last_round is not None and (qc_epoch, qc_round) <= chain.last_round:
        return None  # nothing newer to anchor
    if end_round - window < qc_round <= end_round:
        if not next_record_held:
            return None  # inside the window only a handover may be made: wait for the record
        return Due(
            True,
            f"handover: round {qc_round} is in epoch {qc_epoch}'s handover window "
            f"{end_round - window + 1}..{end_round}",
        )
    if qc_round > end_round:
        return None  # a QC past its epoch's end is not one to anchor
    if not chain.epoch_has_checkpoint:
        return Due(False, f"epoch {qc_epoch} has no checkpoint yet")
    if chain.last_checkpoint_height is None:
        return Due(False, "first checkpoint")
    if cfg.interval_seconds is not None:
        if chain.last_checkpoint_time is None or (
            now - chain.last_checkpoint_time >= cfg.interval_seconds
        ):
            return Due(False, f"{cfg.interval_seconds:.0f} s since the last checkpoint")
        return None
    if chain.tip_height - chain.last_checkpoint_height >= cfg.interval_blocks:
        return Due(
            False,
            f"{chain.tip_height - chain.last_checkpoint_height} blocks since the last checkpoint",
        )
    return None


def initiator_index(checkpoint_seq: int, attempt: int, n: int) -> int:
    return (checkpoint_seq + attempt) % n


def attempt_at(due_since: float, now: float, initiator_timeout: float) -> int:
    return max(0, int((now - due_since) // initiator_timeout))
