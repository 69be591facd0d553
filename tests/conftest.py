"""Shared fixtures. `tiny_dataset`: one small generated dataset per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

TINY_ROWS = 2000


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """A tiny-preset dataset of 2000 rows (1800 train, 200 eval), generated once per session.

    Treat it as read-only; copy it (shutil.copytree) before changing anything.
    """
    from kunbench.generators.config import build_config
    from kunbench.generators.ctr import generate

    root = tmp_path_factory.mktemp("datasets") / "tiny"
    return generate(build_config("tiny", rows=TINY_ROWS), root, progress=False)


@pytest.fixture(autouse=True)
def _system_heap(monkeypatch):
    """The commands tune the process heap (kunbench.host_allocator); tests that invoke them keep
    glibc's defaults, so the test process is not changed for the tests after them. The heap
    tests set what they check."""
    from kunbench import host_allocator

    monkeypatch.setenv(host_allocator.ENV, "system")
    monkeypatch.setattr(host_allocator, "_applied", None)
