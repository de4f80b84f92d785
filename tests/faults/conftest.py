"""Fixtures of the fault tests: a ``make_rig`` factory whose processes are always stopped."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.faults.rig import Rig


@pytest.fixture
def make_rig(tmp_path: Path) -> Iterator[Callable[..., Rig]]:
    rigs: list[Rig] = []

    def factory(**kwargs) -> Rig:
        rig = Rig(tmp_path / f"gw{len(rigs)}", **kwargs)
        rigs.append(rig)
        return rig

    try:
        yield factory
    finally:
        for rig in rigs:
            rig.stop_all()
