"""The example alert rules in docs/operations.md name metrics the node really exports."""

from __future__ import annotations

import re
from pathlib import Path

from anchornode.metrics import Metrics

DOC = (Path(__file__).resolve().parent.parent / "docs" / "operations.md").read_text()


def test_alert_rules_use_exported_metrics():
    rules = DOC[DOC.index("```yaml"):]
    rules = rules[: rules.index("```", 7)]
    names = set(re.findall(r"\b(bft_anchor_[a-z_]+)", rules))
    assert len(names) >= 5
    m = Metrics("v0")
    m.confirmed(101, 1.0e9, "ab" * 32, ["v0", "v1", "v2"])
    m.latency(0.5)
    m.refusal("fee above max_fee_sat")
    exported = {line.split("{")[0].split(" ")[0] for line in m.render().splitlines()
                if line and not line.startswith("#")}
    missing = sorted(n for n in names if n not in exported)
    assert not missing, f"alert rules name metrics the node does not export: {missing}"
