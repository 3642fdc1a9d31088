"""The compiled module must really load; the twin must really be pure Python."""

import os
import subprocess
import sys

import fastcore


def test_compiled_module_loaded_unless_twin_forced():
    forced = os.environ.get("FASTCORE_NO_EXTENSIONS", "") not in ("", "0")
    assert fastcore.COMPILED is (not forced), (
        "fastcore's compiled extension did not load: build it (make install) or set FASTCORE_NO_EXTENSIONS=1"
    )


def test_twin_is_the_interpreted_source():
    twin = fastcore.load_twin()
    assert twin.COMPILED is False
    assert twin.__file__.endswith("_core.py")


def test_environment_variable_forces_the_twin():
    code = "import fastcore; print(fastcore.COMPILED)"
    env = {**os.environ, "FASTCORE_NO_EXTENSIONS": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
