"""The AVC package's pure modules keep no module-level caches: a cache belongs to an object its caller holds
(the fast reader, the attributor), so two pipelines never share one. What they may import (no cycle, no I/O,
no layer above) is checked by the import contracts of pyproject.toml (tests/unit/test_architecture.py)."""

import functools
import importlib

import pytest

from agent.avc.record import BoundedCache

PURE = ("record", "denial", "fastpath", "assembler", "cgroup", "poddir", "attribution")


@pytest.mark.parametrize("name", PURE + ("applied",))
def test_no_module_level_caches(name):
    module = importlib.import_module(f"agent.avc.{name}")
    caches = [key for key, value in vars(module).items()
              if isinstance(value, BoundedCache) or isinstance(value, functools._lru_cache_wrapper)]
    assert not caches
