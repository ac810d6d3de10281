"""Fee rate: the node's estimate clamped to [min_rate, max_rate], unless overridden."""

from __future__ import annotations

from dataclasses import dataclass

from anchornode.pow.rpc import PowRpc, RpcError


@dataclass(frozen=True)
class FeePolicy:
    min_rate: float = 2.0  # sat/vB
    max_rate: float = 50.0
    override: float | None = None
    conf_target: int = 2

    def rate(self, rpc: PowRpc | None) -> float:
        if self.override is not None:
            return self.override
        estimate = None
        if rpc is not None:
            try:
                res = rpc.estimatesmartfee(self.conf_target)
                if "feerate" in res:
                    estimate = float(res["feerate"]) * 1e8 / 1000  # coin/kvB -> sat/vB
            except RpcError:
                estimate = None
        if estimate is None:
            return self.min_rate
        return min(max(estimate, self.min_rate), self.max_rate)
