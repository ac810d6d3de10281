"""The offline half (bftanchor, appliance) must not import the online half."""

import ast
from pathlib import Path

REPO = Path(__file__).parent.parent
OFFLINE = ["bftanchor", "appliance"]
FORBIDDEN = ("anchornode", "anchorcli", "tui")


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            out.add("." * node.level + (node.module or ""))
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def test_offline_half_imports_no_online_module():
    """Backs up import-linter (scripts/test.sh) with lazy imports inside functions too."""
    offenders = []
    for pkg in OFFLINE:
        for f in sorted((REPO / pkg).rglob("*.py")):
            for mod in imported_modules(f):
                if mod.startswith(".") or mod.split(".")[0] in FORBIDDEN:
                    offenders.append(f"{f.relative_to(REPO)} imports {mod}")
    assert not offenders, offenders


def test_the_check_sees_imports():
    assert "anchornode.pow.rpc" in imported_modules(REPO / "anchornode" / "audit.py")


def test_vectors_copy_is_current():
    from conftest import LOCAL_VECTORS, SHARED_VECTORS

    if SHARED_VECTORS.exists():
        assert SHARED_VECTORS.read_bytes() == LOCAL_VECTORS.read_bytes()
    else:
        assert LOCAL_VECTORS.exists()
