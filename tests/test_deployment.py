"""The deployment file: its handover window is required, validated and round-trips."""

from __future__ import annotations

import json

import pytest

from anchornode.bftsim import SimulatedBFTChain
from appliance.signers.software import SoftwareSigner
from bftanchor.deployment import Deployment, DeploymentError, in_window
from bftanchor.template import Coin, Outpoint


@pytest.fixture(scope="module")
def record():
    sim = SimulatedBFTChain.create(4, 50)  # epoch 0: rounds 0..49
    keys = {v.id: SoftwareSigner.from_seed(bytes([i + 1]) * 32).pow_key(0)
            for i, v in enumerate(sim.validators)}
    return sim.make_record(0, keys)


def deployment(record, window=10) -> Deployment:
    return Deployment("litecoin-regtest", b"BFTA", Coin(Outpoint("ab" * 32, 1), 5000, 0),
                      record, window)


def test_window_round_trips_through_the_file(record, tmp_path):
    path = tmp_path / "deployment.json"
    deployment(record, 7).save(path)
    assert json.loads(path.read_text())["handover_window"] == 7
    assert Deployment.load(path).handover_window == 7


@pytest.mark.parametrize("window", [0, -1, 50, 51])
def test_window_out_of_range_is_refused(record, window):
    with pytest.raises(DeploymentError, match="handover_window.*at least 1 and less than"):
        deployment(record, window)
    data = deployment(record).to_json() | {"handover_window": window}
    with pytest.raises(DeploymentError, match=f'"handover_window" {window} must be'):
        Deployment.from_json(data)


def test_old_file_without_the_key_is_refused_naming_it(record, tmp_path):
    data = deployment(record).to_json()
    del data["handover_window"]
    path = tmp_path / "old.json"
    path.write_text(json.dumps(data))
    with pytest.raises(DeploymentError) as exc:
        Deployment.load(path)
    assert str(path) in str(exc.value) and '"handover_window"' in str(exc.value)
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("value", ["10", 1.5, True, None])
def test_window_of_the_wrong_type_is_refused(record, value):
    with pytest.raises(DeploymentError, match="must be an integer"):
        Deployment.from_json(deployment(record).to_json() | {"handover_window": value})


def test_in_window_is_the_last_w_rounds(record):
    assert [r for r in range(0, 60) if in_window(r, record, 3)] == [47, 48, 49]
