"""The audit against chains that break its rules, built for real on regtest."""

from __future__ import annotations

import pytest
from helpers import MAGIC, Fleet

from anchornode.audit import audit_chain

pytestmark = pytest.mark.integration


@pytest.fixture
def fleet(regtest, tmp_path, request):
    return Fleet(regtest, tmp_path, tag=request.node.name)


def audit(fleet, window: int | None = None):
    return audit_chain(
        fleet.node.rpc, fleet.genesis.outpoint, list(fleet.records.values()), MAGIC,
        fleet.deployment.handover_window if window is None else window,
    )


def test_clean_chain_passes_and_lists_every_checkpoint(fleet):
    txids = [fleet.checkpoint(fleet.qc(r)) for r in (5, 10)]
    txids.append(fleet.checkpoint(fleet.qc(90), handover=True))
    txids.append(fleet.checkpoint(fleet.qc(105, epoch=1)))
    report = audit(fleet)
    assert report.ok, report.violations
    assert [c.txid for c in report.checkpoints] == txids
    assert [c.handover for c in report.checkpoints] == [False, False, True, False]
    assert report.coin == f"{txids[-1]}:1" and report.coin_epoch == 1


def test_two_checkpoints_in_one_block(fleet):
    fleet.checkpoint(fleet.qc(5), mine=False)
    fleet.checkpoint(fleet.qc(10))
    report = audit(fleet)
    assert any("a second checkpoint in block" in v for v in report.violations)


def test_early_handover(fleet):
    fleet.checkpoint(fleet.qc(98), handover=True)
    fleet.node.mine(1)
    report = audit(fleet, window=5)
    assert report.ok, report.violations  # 94 < 98 <= 99
    report = audit(fleet, window=1)
    assert any("handover at round 98, outside epoch 0's handover window 99..99" in v
               for v in report.violations)
