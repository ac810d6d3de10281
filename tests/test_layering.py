"""The offline half must not import the online half (node, PoW RPC)."""

import ast
from pathlib import Path

ROOT = Path(__file__).parent.parent / "appliance"
OFFLINE = [
    "checkpoint",
    "policy.py",
    "journal.py",
    "signing.py",
    "signers",
    "config.py",
    "deployment.py",
    "link",
    "emulator",
]
FORBIDDEN = ("node", "pow", "devnet", "audit")


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            out.add(base)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def test_offline_half_imports_no_online_module():
    offenders = []
    for entry in OFFLINE:
        target = ROOT / entry
        files = [target] if target.is_file() else sorted(target.rglob("*.py"))
        for f in files:
            for mod in imported_modules(f):
                parts = mod.lstrip(".").split(".")
                if parts and (
                    parts[0] in FORBIDDEN
                    or mod.startswith("appliance.")
                    and parts[1:2]
                    and parts[1] in FORBIDDEN
                ):
                    offenders.append(f"{f.relative_to(ROOT)} imports {mod}")
    assert not offenders, offenders


def test_the_check_sees_imports():
    assert ".pow.rpc" in imported_modules(ROOT / "audit.py")


def test_vectors_copy_is_current():
    from conftest import LOCAL_VECTORS, SHARED_VECTORS

    if SHARED_VECTORS.exists():
        assert SHARED_VECTORS.read_bytes() == LOCAL_VECTORS.read_bytes()
    else:
        assert LOCAL_VECTORS.exists()
