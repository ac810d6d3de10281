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


def documented_commands() -> list[list[str]]:
    """Every `bft-anchor ...` command line in the document's indented examples."""
    lines, out = DOC.replace("\\\n", " ").splitlines(), []
    for line in lines:
        text = line.strip()
        if line.startswith("    ") and text.startswith("bft-anchor "):
            out.append(text.split("#")[0].split(">")[0].split())
    return out


def test_every_documented_option_exists():
    """Each option an example uses is one its command's --help lists (no stale flags)."""
    import contextlib
    import io

    from anchorcli.main import main

    commands = documented_commands()
    assert len(commands) >= 15
    checked = 0
    for argv in commands:
        words = []
        for tok in argv[1:]:
            if tok.startswith("-") or "/" in tok or "." in tok or not tok.isalpha():
                break
            words.append(tok)
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
            try:
                main([*words, "--help"])
            except SystemExit:
                pass
        helptext = out.getvalue()
        assert helptext, f"no --help for `bft-anchor {' '.join(words)}`"
        for opt in (t.split("=")[0] for t in argv if t.startswith("--")):
            assert opt in helptext, f"`bft-anchor {' '.join(words)}` has no option {opt}"
            checked += 1
    assert checked >= 30
