"""A misspelt key in the appliance's or the node's config is refused at start, naming
the file, the section and the key (an ignored `max_fe_sat` would leave the limit at
its default)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from anchornode.config import EXAMPLE as NODE_EXAMPLE
from anchornode.config import NodeConfig, NodeConfigError
from appliance.config import EXAMPLE as APPLIANCE_EXAMPLE
from appliance.config import ApplianceConfig, ConfigError


def write(tmp: Path, name: str, text: str) -> Path:
    path = tmp / name
    path.write_text(text)
    return path


def test_the_examples_are_accepted(tmp_path: Path) -> None:
    assert ApplianceConfig.load(write(tmp_path, "a.toml", APPLIANCE_EXAMPLE)).limits.max_fee_sat
    assert NodeConfig.load(write(tmp_path, "n.toml", NODE_EXAMPLE)).validator_id == "v0"


@pytest.mark.parametrize(
    "old, new, where",
    [
        ("max_fee_sat = 100000", "max_fe_sat = 100000", "'max_fe_sat' in [limits]; did you "
         "mean 'max_fee_sat'?"),
        ('approval = "auto"', 'aproval = "auto"', "'aproval' at the top level"),
        ('kind = "software"', 'kind = "software"\nfingerprnt = "d8e50907"', "'fingerprnt' in "
         "[signer]"),
        ("[limits]", "[limit]", "'limit' at the top level"),
    ],
)
def test_appliance_config_refuses_unknown_keys(tmp_path: Path, old, new, where) -> None:
    path = write(tmp_path, "appliance.toml", APPLIANCE_EXAMPLE.replace(old, new))
    with pytest.raises(ConfigError) as err:
        ApplianceConfig.load(path)
    assert str(err.value).startswith(f"appliance config {path}: unknown key ")
    assert where in str(err.value)


@pytest.mark.parametrize(
    "old, new, where",
    [
        ("max_rate = 50.0", "max_rat = 50.0", "'max_rat' in [fees]; did you mean 'max_rate'?"),
        ('address = "127.0.0.1:7301"', 'adress = "127.0.0.1:7301"', "'adress' in [peers]"),
        ('cookie = "/var', 'cokie = "/var', "'cokie' in [pow.nodes]"),
        ("stuck_after = 2", "stuck_afer = 2", "'stuck_afer' in [schedule]"),
        ('listen = "', 'listne = "', "'listne' at the top level"),
    ],
)
def test_node_config_refuses_unknown_keys(tmp_path: Path, old, new, where) -> None:
    assert old in NODE_EXAMPLE
    path = write(tmp_path, "node.toml", NODE_EXAMPLE.replace(old, new))
    with pytest.raises(NodeConfigError) as err:
        NodeConfig.load(path)
    assert str(err.value).startswith(f"node config {path}: unknown key ")
    assert where in str(err.value)


def test_the_commands_refuse_to_start_with_one_line(tmp_path: Path) -> None:
    node = write(tmp_path, "node.toml", NODE_EXAMPLE.replace("min_rate", "minrate"))
    app = write(tmp_path, "appliance.toml", APPLIANCE_EXAMPLE.replace("max_fee_rate", "max_rate"))
    for args, path, key in (
        (["node", "--config", str(node)], node, "'minrate' in [fees]"),
        (["appliance", "status", "--config", str(app)], app, "'max_rate' in [limits]"),
    ):
        out = subprocess.run(
            [sys.executable, "-m", "anchorcli", *args], capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 2, out.stderr
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and str(path) in lines[0] and key in lines[0], out.stderr
