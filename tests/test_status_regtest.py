import pytest
from helpers import SCRIPT_IDS, SCRIPT_PAIRS, Fleet

from anchornode.status import chain_status, format_status


@pytest.fixture(params=SCRIPT_PAIRS, ids=SCRIPT_IDS)
def fleet(regtest, tmp_path, request):
    """Status reads signers from wsh witnesses and from tapscript ones."""
    return Fleet(regtest, tmp_path, tag=request.node.name, scripts=request.param)


def test_signers_missed_and_epoch_alert(fleet, regtest):
    t1 = fleet.checkpoint(fleet.qc(5), only=["v0", "v1", "v2"])
    fleet.checkpoint(fleet.qc(90), handover=True)
    regtest.mine(4)
    st = chain_status(regtest.rpc, fleet.deployment, fleet.records, alert_blocks=3)
    row = next(r for r in st.checkpoints if r["txid"] == t1)
    assert row["signed_by"] == ["v0", "v1", "v2"] and row["missed"] == ["v3"]
    assert st.coin_epoch == 1 and st.checkpoints[-1]["handover"]
    assert any("epoch 1 has no checkpoint" in a for a in st.alerts)
    text = format_status(st)
    assert "HANDOVER" in text and "ALERT" in text
    quiet = chain_status(regtest.rpc, fleet.deployment, fleet.records, alert_blocks=50)
    assert quiet.alerts == []


@pytest.mark.integration
def test_a_handover_to_an_unknown_record_is_named_not_blamed_on_signers(fleet, regtest):
    fleet.checkpoint(fleet.qc(5))
    fleet.checkpoint(fleet.qc(90), handover=True)
    regtest.mine(1)
    only_epoch0 = {0: fleet.records[0]}
    st = chain_status(regtest.rpc, fleet.deployment, only_epoch0, alert_blocks=50)
    assert not st.coin_epoch_known and st.checkpoints[-1]["handover"]
    assert any("no record for epoch 1?" in a for a in st.alerts)
    assert "epoch unknown" in format_status(st)
