"""The layout of DESIGN section 12: one folder per layer, imports point down only, no circles.

    gateway/ (api > partners, intake > idempotency > redis, kafka > telemetry > base)     processor/
                 \\_______________________________________________________________________/
                                 settlement/ (the shared core)
                                 fastcore/ (the compiled floor)

The gateway and the processor are siblings: neither imports the other."""

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("fastcore", "settlement", "gateway", "processor")

# package -> the packages it may import (besides itself)
PACKAGE_MAY_IMPORT = {
    "fastcore": set(),
    "settlement": {"fastcore"},
    "gateway": {"settlement", "fastcore"},
    "processor": {"settlement", "fastcore"},
}

# inside the gateway: layer -> the layers it may import (besides itself); `base` is gateway/settings.py,
# errors.py, __init__.py
MAY_IMPORT = {
    "api": {"partners", "intake", "idempotency", "kafka", "telemetry", "base"},
    "partners": {"idempotency", "telemetry", "base"},
    "intake": {"idempotency", "kafka", "telemetry", "base"},
    "idempotency": {"redis", "telemetry", "base"},
    "redis": set(),  # the transport imports nothing of the gateway
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
    """Every module (and `module.name`) a file imports absolutely, at any depth of its code."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def module_of(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def sources(root: Path = ROOT) -> dict[str, Path]:
    return {module_of(path, root): path for package in PACKAGES for path in sorted((root / package).rglob("*.py"))}


def wrong_package_imports(root: Path = ROOT) -> list[str]:
    """Every import of a package that PACKAGE_MAY_IMPORT does not allow its importer."""
    wrong = []
    for module, path in sources(root).items():
        own = module.split(".")[0]
        for imported in imports_of(path):
            other = imported.split(".")[0]
            if other in PACKAGES and other != own and other not in PACKAGE_MAY_IMPORT[own]:
                wrong.append(f"{module} ({own}) imports {imported}")
    return wrong


def test_packages_import_only_the_packages_below_them() -> None:
    assert wrong_package_imports() == []


def test_every_gateway_module_sits_in_a_layer_folder() -> None:
    loose = sorted(
        p.name
        for p in (ROOT / "gateway").glob("*.py")
        if p.name not in ("__init__.py", "__main__.py", "settings.py", "errors.py")
    )
    assert loose == [], f"modules outside the layer folders: {loose}"


def test_gateway_imports_point_down_only() -> None:
    wrong = []
    for path in sorted((ROOT / "gateway").rglob("*.py")):
        module = module_of(path)
        if path.name == "__main__.py":
            continue  # the entry point may start anything
        own = layer_of(module)
        assert own is not None
        for imported in imports_of(path):
            other = layer_of(imported)
            if other is None or other == own or imported == "gateway":
                continue
            if other not in MAY_IMPORT[own]:
                wrong.append(f"{module} ({own}) imports {imported} ({other})")
    assert wrong == []


def test_no_module_imports_itself_back_in_a_circle() -> None:
    known = sources()
    graph: dict[str, set[str]] = defaultdict(set)
    for module, path in known.items():
        for imported in imports_of(path):
            # `from a.b import c` names module a.b.c when c is one, else a name in a.b
            target = imported if imported in known else imported.rpartition(".")[0]
            if target in known and target != module:
                graph[module].add(target)
    circles = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for nxt in sorted(graph[module]):
            if state.get(nxt) == 1:
                circles.append(" -> ".join([*path[path.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[module] = 2

    for module in sorted(known):
        if module not in state:
            visit(module, [module])
    assert circles == []


def test_the_package_check_finds_sibling_and_upward_imports(tmp_path: Path) -> None:
    """The check is not vacuous: in a tree where the processor imports the gateway, the gateway the
    processor (inside a function) and the core the gateway, each import is found, and nothing else."""
    files = {
        "processor/bad.py": "from gateway.settings import Settings\n",
        "gateway/api/bad.py": "def f():\n    import processor.store\n",
        "settlement/bad.py": "import gateway.errors\n",
        "settlement/good.py": "import fastcore\nfrom settlement import ids\n",
        "fastcore/good.py": "import os\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert sorted(wrong_package_imports(tmp_path)) == [
        "gateway.api.bad (gateway) imports processor.store",
        "processor.bad (processor) imports gateway.settings",
        "processor.bad (processor) imports gateway.settings.Settings",
        "settlement.bad (settlement) imports gateway.errors",
    ]
