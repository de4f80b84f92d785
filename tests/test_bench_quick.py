"""Every benchmark in bench/ runs in its quick mode, so a change that breaks one (a schema
column, a renamed function) fails the test suite instead of rotting until someone measures.

The quick modes are small: they check that the benchmark still runs end to end against its peer
(numbers are printed, targets are not enforced at that size).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import POSTGRES_ADMIN_URL

REPO = Path(__file__).resolve().parents[1]

#: bench script -> (extra arguments, a line its quick run must print).
QUICK_RUNS: dict[str, tuple[list[str], str]] = {
    "findings_query.py": (["--url", POSTGRES_ADMIN_URL], "targets (search p95"),
    "image_prep.py": ([], "| radiograph 2048x2048 | 1 |"),
    "tiny_study.py": ([], "| analyse_study end to end"),
    "ingest.py": (["--receivers", "storescp,orthanc,node", "--associations", "1"], "node / receiver"),
}
#: Run elsewhere in the suite with their own checks.
RUN_ELSEWHERE = {"model_throughput.py": "tests/model/test_backends.py::test_model_throughput_bench_quick"}


def test_every_benchmark_has_a_quick_run_in_the_suite() -> None:
    scripts = {p.name for p in (REPO / "bench").glob("*.py")}
    missing = scripts - QUICK_RUNS.keys() - RUN_ELSEWHERE.keys()
    assert not missing, f"benchmarks without a quick run in tests/test_bench_quick.py: {sorted(missing)}"
    for name in scripts:
        assert "--quick" in (REPO / "bench" / name).read_text(), f"bench/{name} has no --quick mode"


@pytest.mark.parametrize("script", sorted(QUICK_RUNS))
def test_benchmark_quick_mode_runs(script: str, tmp_path: Path) -> None:
    extra, expected = QUICK_RUNS[script]
    if script == "ingest.py":
        extra = [*extra, "--work", str(tmp_path / "work")]
    env = {**os.environ, "PYTHONPATH": str(REPO), "TCP_NODELAY": "1"}
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / script), "--quick", *extra],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, f"bench/{script} --quick failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert expected in done.stdout, done.stdout[-3000:]
