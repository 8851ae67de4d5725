"""The map of the house, enforced: every import between rooms points down (or is listed here).

Each module of cxr_fhir belongs to one room; a room may import itself and the rooms listed for it,
nothing else (no arrow up, none sideways). Imports inside functions and under TYPE_CHECKING count
too: a lazy import is still an arrow. The README's Architecture section draws the same table.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from cxr_fhir.settings import PROJECT_ROOT

SRC = PROJECT_ROOT / "src"
PACKAGE = SRC / "cxr_fhir"

# Modules that are rooms of their own although they live inside another package: the row types
# (SQLModel classes and column types, no session and no query) are the records every room speaks.
ROOM_OF_MODULE = {
    "cxr_fhir.records.tables": "records",
    "cxr_fhir.records.types": "records",
    "cxr_fhir.settings": "config",
    "cxr_fhir.logs": "config",
    "cxr_fhir.app": "app",
    "cxr_fhir.admission": "app",
    "cxr_fhir.cli": "app",
}

# room -> the rooms it may import (besides itself). Top to bottom.
ALLOWED: dict[str, set[str]] = {
    "app": {"api", "web", "outbound", "dimse", "dicom", "hl7v2", "services", "security", "storage", "fhir",
            "inference", "imaging", "training",
            "domain", "records", "config", "loadtest"},
    "loadtest": set(),
    "api": {"services", "security", "storage", "fhir", "imaging", "domain", "records", "config"},
    "dimse": {"services", "security", "storage", "imaging", "domain", "records", "config"},
    "web": {"services", "security", "storage", "imaging", "domain", "records", "config"},
    "outbound": {"services", "security", "storage", "fhir", "dicom", "hl7v2", "imaging", "domain", "records",
                 "config"},
    "services": {"security", "storage", "fhir", "inference", "imaging", "domain", "records", "config"},
    "training": {"inference", "imaging", "domain"},
    "security": {"storage", "domain", "records"},
    "storage": {"fhir", "domain", "records"},
    "inference": {"imaging", "domain"},
    "imaging": {"domain"},
    "fhir": {"domain", "records"},
    "dicom": {"imaging", "domain", "records"},
    "hl7v2": {"domain", "records"},
    "records": {"domain"},
    "config": set(),
    "domain": set(),
}


def _module(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def room(module: str) -> str:
    for prefix, name in ROOM_OF_MODULE.items():
        if module == prefix or module.startswith(prefix + "."):
            return name
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "app"


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) of every cxr_fhir import in the file, relative ones resolved."""
    module = _module(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("cxr_fhir")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("cxr_fhir"):
                continue
            # "from . import x" names modules: each is an arrow of its own
            names = [f"{target}.{a.name}" for a in node.names] if not node.module else [target]
            found += [(node.lineno, n) for n in names]
    return found


def violations() -> list[str]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        here = room(_module(path))
        assert here in ALLOWED, f"{path}: room {here!r} is not on the map; add it to ALLOWED"
        for line, target in _imports(path):
            there = room(target)
            if there != here and there not in ALLOWED[here]:
                out.append(f"{path.relative_to(SRC)}:{line} ({here}) imports {target} ({there})")
    return out


def _cycles_between_modules(prefix: str) -> list[tuple[str, str]]:
    edges: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        mod = _module(path)
        if mod.startswith(prefix):
            edges[mod] = {t for _, t in _imports(path) if t.startswith(prefix) and t != mod}
    return sorted((a, b) for a, targets in edges.items() for b in targets if a in edges.get(b, set()) and a < b)


def test_every_arrow_points_down():
    assert violations() == []


def test_the_rooms_are_acyclic_as_declared():
    # The table itself must be a hierarchy: no two rooms may each import the other.
    mutual = [(a, b) for a, allowed in ALLOWED.items() for b in allowed if a in ALLOWED.get(b, set())]
    assert mutual == []


@pytest.mark.parametrize("package", ["cxr_fhir.imaging", "cxr_fhir.inference", "cxr_fhir.services",
                                     "cxr_fhir.storage", "cxr_fhir.fhir", "cxr_fhir.api.fhir", "cxr_fhir.web"])
def test_no_two_modules_import_each_other(package):
    assert _cycles_between_modules(package + ".") == []


def test_the_checker_sees_an_arrow_up(tmp_path, monkeypatch):
    """The check could fail: a domain module importing a service is reported."""
    bad = PACKAGE / "domain" / "_arrow_up_probe.py"
    bad.write_text("from ..services import patients\n")
    try:
        assert any("_arrow_up_probe" in v and "(services)" in v for v in violations())
    finally:
        bad.unlink()
