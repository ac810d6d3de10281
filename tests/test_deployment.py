"""The deployment file: its handover window is required, validated and round-trips."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anchornode.bftsim import SimulatedBFTChain
from appliance.signers.software import SoftwareSigner
from bftanchor.deployment import Deployment, DeploymentError, in_window, load_epochs
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


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                max_size=3),
    max_leaves=8,
)
FIXTURE = HealthCheck.function_scoped_fixture
FIELDS = ["chain", "magic", "genesis", "epoch0", "handover_window"]


@settings(max_examples=150, deadline=None, suppress_health_check=[FIXTURE])
@given(field=st.sampled_from(FIELDS), value=JSON, drop=st.booleans())
def test_any_field_mutation_is_a_clear_refusal_or_a_deployment(record, field, value, drop):
    data = deployment(record).to_json()
    if drop:
        del data[field]
    else:
        data[field] = value
    try:
        Deployment.from_json(data)
    except DeploymentError as exc:
        assert "\n" not in str(exc) and str(exc)


@settings(max_examples=100, deadline=None, suppress_health_check=[FIXTURE])
@given(value=JSON)
def test_any_epochs_file_is_records_or_one_clear_line(tmp_path, value):
    path = tmp_path / "epochs.json"
    path.write_text(json.dumps(value))
    try:
        load_epochs(path)
    except DeploymentError as exc:
        assert str(path) in str(exc) and "\n" not in str(exc)
