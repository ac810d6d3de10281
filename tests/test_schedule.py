from anchornode.ladder import fee_ladder
from anchornode.schedule import (
    ChainState,
    ScheduleConfig,
    attempt_at,
    due,
    initiator_index,
)

CFG = ScheduleConfig(interval_blocks=3, initiator_timeout=10)
W = 6  # the handover window: rounds 94..99 of an epoch ending at 99


def chain(**kw):
    base = dict(tip_height=100, coin_epoch=1, coin_confirmed=True, last_checkpoint_height=98,
                last_checkpoint_time=0.0, epoch_has_checkpoint=True, last_round=(1, 40))
    base.update(kw)
    return ChainState(**base)


def test_one_per_block_never_spends_unconfirmed():
    assert due(CFG, chain(coin_confirmed=False, epoch_has_checkpoint=False), 1, 50, 99,
               True, 0, W) is None


def test_interval_in_blocks():
    assert due(CFG, chain(), 1, 50, 99, False, 0, W) is None  # 2 blocks < 3
    d = due(CFG, chain(tip_height=101), 1, 50, 99, False, 0, W)
    assert d is not None and not d.handover


def test_interval_in_seconds():
    cfg = ScheduleConfig(interval_seconds=60)
    assert due(cfg, chain(last_checkpoint_time=1000.0), 1, 50, 99, False, 1030.0, W) is None
    assert due(cfg, chain(last_checkpoint_time=1000.0), 1, 50, 99, False, 1061.0, W) is not None


def test_handover_at_the_first_qc_in_the_window():
    d = due(CFG, chain(), 1, 94, 99, True, 0, W)  # 99 - 6 < 94 <= 99
    assert d is not None and d.handover and "94..99" in d.reason
    assert due(CFG, chain(), 1, 93, 99, True, 0, W) is None  # before the window, interval not met
    late = due(CFG, chain(), 1, 99, 99, True, 0, W)  # the epoch's last round is still inside
    assert late is not None and late.handover


def test_no_regular_checkpoint_inside_the_window():
    # Without the next epoch's record only a handover could be made: wait for the record,
    # even when the interval or "first of the epoch" would call for a regular one.
    assert due(CFG, chain(tip_height=101), 1, 94, 99, False, 0, W) is None
    assert due(CFG, chain(tip_height=101, epoch_has_checkpoint=False), 1, 99, 99, False, 0,
               W) is None
    regular = due(CFG, chain(tip_height=101), 1, 93, 99, False, 0, W)  # just before it
    assert regular is not None and not regular.handover


def test_a_qc_past_its_epochs_end_is_never_anchored():
    assert due(CFG, chain(tip_height=200), 1, 100, 99, True, 0, W) is None


def test_first_of_an_epoch_is_due_at_once():
    d = due(CFG, chain(epoch_has_checkpoint=False, last_round=(0, 30)), 1, 41, 99, False, 0, W)
    assert d is not None and "no checkpoint yet" in d.reason


def test_nothing_newer_nothing_due_and_wrong_epoch():
    assert due(CFG, chain(tip_height=200), 1, 40, 99, False, 0, W) is None
    assert due(CFG, chain(tip_height=200), 0, 60, 99, False, 0, W) is None


def test_initiator_rotation_and_failover():
    assert [initiator_index(s, 0, 4) for s in range(5)] == [0, 1, 2, 3, 0]
    assert [initiator_index(7, a, 4) for a in range(3)] == [3, 0, 1]
    assert attempt_at(100.0, 109.9, 10) == 0 and attempt_at(100.0, 125.0, 10) == 2


def test_fee_ladder_satisfies_bip125():
    vsize = 225
    fees = fee_ladder(450, vsize, 4, 1.5)
    assert fees[0] == 450
    for a, b in zip(fees, fees[1:], strict=False):
        assert b >= a + vsize  # at least the incremental relay fee (1 sat/vB) more
    assert fee_ladder(450, vsize, 1, 1.5, floor=900) == [900]
