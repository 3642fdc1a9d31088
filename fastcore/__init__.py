"""fastcore: validation and settlement-window routing of transactions, compiled with Cython.

The compiled extension is used when it was built; otherwise, or when FASTCORE_NO_EXTENSIONS=1,
the pure-Python twin (the same source, run by the interpreter). `COMPILED` says which one loaded.
"""

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

from fastcore.errors import FastcoreError, PolicyError, RoutingUnavailable, ValidationFailed


def load_twin() -> ModuleType:
    """The pure-Python twin: `_core.py` loaded from source as `fastcore._core_py`, even when compiled."""
    name = "fastcore._core_py"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("_core.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


if os.environ.get("FASTCORE_NO_EXTENSIONS", "") not in ("", "0"):
    _impl = load_twin()
else:
    # The import system prefers the built extension module over the .py source of the same name.
    from fastcore import _core as _impl

COMPILED: bool = _impl.COMPILED
Policy = _impl.Policy
Rules = _impl.Rules
CurrencyCalendar = _impl.CurrencyCalendar
Instruction = _impl.Instruction
Routing = _impl.Routing
validate = _impl.validate
validate_all = _impl.validate_all
route = _impl.route
duplicate_members = _impl.duplicate_members
WINDOWS = _impl.WINDOWS

__all__ = [
    "COMPILED",
    "WINDOWS",
    "CurrencyCalendar",
    "FastcoreError",
    "Instruction",
    "Policy",
    "PolicyError",
    "Routing",
    "RoutingUnavailable",
    "Rules",
    "ValidationFailed",
    "duplicate_members",
    "load_twin",
    "route",
    "validate",
    "validate_all",
]
