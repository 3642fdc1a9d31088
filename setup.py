"""Builds fastcore's Cython extension; all metadata lives in pyproject.toml.

fastcore/_core.py is written in Cython's pure-Python mode: compiled here, run as-is as the twin.
"""

from Cython.Build import cythonize
from setuptools import setup

setup(
    ext_modules=cythonize(
        ["fastcore/_core.py"],
        compiler_directives={"language_level": "3", "boundscheck": False, "wraparound": False},
    )
)
