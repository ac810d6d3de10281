"""What every benchmark gets: the run mode, a scratch directory, progress output and
one shared regtest node, started on first use and stopped when the run ends."""

from __future__ import annotations

import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anchornode.pow.regtest import RegtestNode


@dataclass
class BenchContext:
    quick: bool = False
    _tmp: tempfile.TemporaryDirectory | None = field(default=None, repr=False)
    _node: RegtestNode | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="bft-anchor-bench-")

    @property
    def tmp(self) -> Path:
        assert self._tmp is not None
        return Path(self._tmp.name)

    def scratch(self, name: str) -> Path:
        path = self.tmp / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def pick(self, full: Any, quick: Any) -> Any:
        """The full-run or the --quick value of an iteration count or time budget."""
        return quick if self.quick else full

    def say(self, line: str) -> None:
        print(f"[bench] {line}", file=sys.stderr, flush=True)

    def node(self) -> RegtestNode:
        """The run's regtest node with a funded wallet named 'bench'."""
        if self._node is None:
            self.say("starting a regtest PoW node")
            node = RegtestNode(datadir=self.tmp / "pow")
            node.start()
            self._node = node
            node.create_wallet("bench")
            node.mine(101)
        return self._node

    def close(self) -> None:
        if self._node is not None:
            self._node.stop()
            self._node = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
