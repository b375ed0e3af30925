"""The relabel benchmark's syscall floors (bench/_floor.c), kept out of the product: built on demand into
build/bench-floor/ with the compiler flags setup.py gives the walker (so floor and walker are compiled alike),
and imported from there.

Usage: `directory = relabel_floor.build()` then, in the measuring process, `sys.path.insert(0, directory);
import _floor; _floor.floor(dirs, names, label, threads, mode)`. `FloorUnavailable` says why it cannot be built.
"""

from __future__ import annotations

import ast
import glob
import hashlib
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE = os.path.join(REPO, "bench", "_floor.c")
HEADER_DIR = os.path.join(REPO, "agent", "relabel")  # _xattr.h: the walker's own xattr calls
FLOOR_SET, FLOOR_GET, FLOOR_COMPARE = 0, 1, 2  # _floor.floor modes


class FloorUnavailable(RuntimeError):
    """The floor extension cannot be built here (no compiler, no Python headers, no setuptools)."""


def walker_compile_args(setup_py: str = os.path.join(REPO, "setup.py")) -> list[str]:
    """The extra_compile_args of setup.py's agent.relabel._walker Extension, read without running setup.py: a
    list literal in the call, or a module-level name bound to one."""
    with open(setup_py) as handle:
        tree = ast.parse(handle.read())
    bound = {target.id: node.value for node in tree.body if isinstance(node, ast.Assign)
             for target in node.targets if isinstance(target, ast.Name)}
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Extension" and node.args
                and isinstance(node.args[0], ast.Constant) and node.args[0].value == "agent.relabel._walker"):
            for keyword in node.keywords:
                if keyword.arg == "extra_compile_args":
                    value = keyword.value
                    if isinstance(value, ast.Name) and value.id in bound:
                        value = bound[value.id]
                    return list(ast.literal_eval(value))
    raise FloorUnavailable(f"{setup_py} has no agent.relabel._walker Extension with extra_compile_args")


def built_module(directory: str) -> str | None:
    """The `_floor` extension file in a directory `build` returned (None where there is none)."""
    found = sorted(glob.glob(os.path.join(directory, "_floor*.so")))
    return found[0] if found else None


def build() -> str:
    """The directory holding the built `_floor` module, built first unless this source and these flags were
    built before."""
    flags = walker_compile_args()
    digest = hashlib.sha256(repr(flags).encode())
    for path in (SOURCE, os.path.join(HEADER_DIR, "_xattr.h")):
        with open(path, "rb") as handle:
            digest.update(handle.read())
    out = os.path.join(REPO, "build", "bench-floor", digest.hexdigest()[:16])
    if built_module(out):
        return out
    try:
        from setuptools import Distribution, Extension

        extension = Extension("_floor", sources=[SOURCE], include_dirs=[HEADER_DIR], extra_compile_args=flags,
                              libraries=["pthread"])
        command = Distribution({"ext_modules": [extension]}).get_command_obj("build_ext")
        command.build_lib = out
        command.build_temp = os.path.join(out, "objects")
        command.ensure_finalized()
        command.run()
    except Exception as err:  # setuptools reports a missing compiler or header in several exception types
        raise FloorUnavailable(f"cannot build bench/_floor.c: {err}") from None
    if not built_module(out):
        raise FloorUnavailable(f"building bench/_floor.c left no module in {out}")
    return out
