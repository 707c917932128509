"""The speed benchmarks run end to end (tiny sizes) and write their table and plot."""

from __future__ import annotations

import re
import subprocess
import sys
import pytest

from tests.helpers import REPO

pytest.importorskip("matplotlib")
BENCHMARKS = REPO / "benchmarks"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("script", "row", "state_bytes"),
    [("step_speed", "lion_integrations fused", "4.000"), ("quant_speed", "Lion8bit (fused)", "1.016")],
)
def test_speed_benchmark_writes_ratios_state_sizes_and_a_plot(tmp_path, script, row, state_bytes):
    subprocess.run(
        [sys.executable, str(BENCHMARKS / f"{script}.py"), "--quick", "--params", "1048576", "--output-dir", str(tmp_path)],
        check=True, capture_output=True, text=True, timeout=600,
    )
    table = (tmp_path / f"{script}.md").read_text()
    cells = next(line for line in table.splitlines() if line.startswith(f"| {row} |")).split(" | ")
    assert re.fullmatch(r"\d+\.\d\dx", cells[1])  # step / floor: a ratio, never a bare time
    assert state_bytes in cells
    assert (tmp_path / f"{script}.png").read_bytes().startswith(b"\x89PNG")
