"""The layers of docs/architecture.md hold: no package imports one above it.

Every module's imports are read with :mod:`ast` (relative ones resolved), so
an import inside a function or under ``TYPE_CHECKING`` counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("broker", "supervisor", "bench", "chaos")

# package prefix -> prefixes it must never import
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "supervisor": ("broker", "bench", "chaos", "tests"),
    "broker": ("bench", "chaos", "tests"),
    "broker.config": ("broker.",),
    "broker.store": ("broker.",),
    "broker.text": ("broker.",),
    "broker.reply": ("broker.",),
    "broker.sentences": ("broker.",),
    "broker.pulse": ("broker.",),
    "broker.logs": (
        "broker.acp",
        "broker.sessions",
        "broker.chat",
        "broker.frontends",
        "broker.ops",
    ),
    "broker.acp": ("broker.sessions", "broker.chat", "broker.frontends", "broker.ops"),
    "broker.sessions": ("broker.chat", "broker.frontends", "broker.ops", "broker.testing"),
    "broker.frontends": ("broker.acp", "broker.sessions", "broker.chat", "broker.ops"),
    "broker.chat": ("broker.ops", "broker.testing", "broker.cluster"),
    "broker.cluster": (
        "broker.acp",
        "broker.sessions",
        "broker.chat",
        "broker.ops",
        "broker.testing",
    ),
}


# Leaves that import nothing of the broker, so every layer may use them.
LEAVES = ("broker.pulse",)


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _under(imported: str, prefix: str) -> bool:
    """``prefix`` ``"a.b"`` names a.b and what is inside it; ``"a."`` only what is inside a."""
    if prefix.endswith("."):
        return imported.startswith(prefix)
    return imported == prefix or imported.startswith(prefix + ".")


def violations() -> list[str]:
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            name = module_name(path)
            for imported in sorted(imports_of(path)):
                if any(_under(imported, leaf) for leaf in LEAVES):
                    continue
                for owner, banned in FORBIDDEN.items():
                    if name != owner and not name.startswith(owner + "."):
                        continue
                    if any(_under(imported, prefix) for prefix in banned):
                        found.append(f"{name} imports {imported} (a higher layer than {owner})")
    return found


def test_no_package_imports_a_higher_layer() -> None:
    assert violations() == []


def test_the_layer_check_sees_a_violation(tmp_path: Path) -> None:
    bad = ROOT / "supervisor" / "_layer_probe.py"
    assert not bad.exists()
    bad.write_text("from broker.sessions import pool\n")
    try:
        assert (
            "supervisor._layer_probe imports broker.sessions (a higher layer than supervisor)"
            in violations()
        )
    finally:
        bad.unlink()
