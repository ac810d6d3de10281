"""Shared fixtures: the design's vectors and a real regtest PoW node."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

HERE = Path(__file__).parent
SHARED_VECTORS = HERE.parent.parent / "shared" / "vectors" / "formats.json"
LOCAL_VECTORS = HERE / "vectors" / "formats.json"


@pytest.fixture(scope="session")
def vectors() -> dict:
    path = SHARED_VECTORS if SHARED_VECTORS.exists() else LOCAL_VECTORS
    return json.loads(path.read_text())


@pytest.fixture(autouse=True, scope="session")
def _textual_idle_in_finer_steps():
    """Textual's pilot waits for "idle" after every key press (twice) and every pause: it
    sleeps in 20 ms steps until one step passes with under 1 ms of process CPU. The same
    test in 5 ms steps (under 0.25 ms of CPU) keeps its meaning and halves the console
    tests' wall time; waits for a condition (workers done, a queue drained) stay exact."""
    import textual._wait as wait

    saved = wait.SLEEP_GRANULARITY, wait.SLEEP_IDLE
    wait.SLEEP_GRANULARITY, wait.SLEEP_IDLE = 0.005, 0.005 / 20
    yield
    wait.SLEEP_GRANULARITY, wait.SLEEP_IDLE = saved


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test that uses the session's PoW node is an integration test, whether or
    not its module says so (modules that start nodes themselves mark it explicitly)."""
    for item in items:
        if "regtest" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.integration)


def _have_pow_node() -> bool:
    return bool(shutil.which("litecoind") or shutil.which("bitcoind"))


@pytest.fixture(scope="session")
def regtest():
    """One regtest node for the session, with a funded wallet."""
    if not _have_pow_node():
        pytest.fail("no PoW node: install litecoind (apt-get install -y litecoind)")
    from anchornode.pow.regtest import RegtestNode

    node = RegtestNode().start()
    node.create_wallet("test")
    node.mine(110)
    yield node
    node.stop()
