"""The layout of DESIGN section 12: one folder per layer, imports point down only, no circles."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# layer -> the layers it may import (besides itself); `base` is gateway/settings.py, errors.py, ids.py, __init__.py
MAY_IMPORT = {
    "api": {"partners", "intake", "idempotency", "kafka", "telemetry", "base"},
    "partners": {"idempotency", "telemetry", "base"},
    "intake": {"idempotency", "kafka", "telemetry", "base"},
    "idempotency": {"telemetry", "base"},
    "kafka": {"telemetry", "base"},
    "telemetry": {"base"},
    "base": set(),
}


def layer_of(module: str) -> str | None:
    """`gateway.intake.flow` -> `intake`; `gateway.settings` -> `base`; None outside the gateway."""
    parts = module.split(".")
    if parts[0] != "gateway":
        return None
    if len(parts) > 1 and parts[1] in MAY_IMPORT:
        return parts[1]
    return "base"


def imports_of(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_every_gateway_module_sits_in_a_layer_folder() -> None:
    loose = sorted(
        p.name
        for p in (ROOT / "gateway").glob("*.py")
        if p.name not in ("__init__.py", "__main__.py", "settings.py", "errors.py", "ids.py")
    )
    assert loose == [], f"modules outside the layer folders: {loose}"


def test_imports_point_down_only() -> None:
    wrong = []
    for path in sorted((ROOT / "gateway").rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        if path.name == "__main__.py":
            continue  # the entry point may start anything
        own = layer_of(module)
        assert own is not None
        for imported in imports_of(path):
            other = layer_of(imported)
            if other is None or other == own or imported == "gateway":
                continue
            if imported.startswith("gateway.") and imported.split(".")[1] in ("__version__",):
                continue
            if other not in MAY_IMPORT[own]:
                wrong.append(f"{module} ({own}) imports {imported} ({other})")
    assert wrong == []


def test_fastcore_and_processor_never_import_the_http_edge() -> None:
    for package in ("fastcore", "processor"):
        for path in (ROOT / package).rglob("*.py"):
            for imported in imports_of(path):
                assert not imported.startswith(("gateway.api", "gateway.partners")), f"{path} imports {imported}"
            if package == "fastcore":
                assert not any(i.startswith(("gateway", "processor")) for i in imports_of(path)), path
