"""Every notebook runs top to bottom under papermill too, not only under nbval.

papermill does not honour the ``raises-exception`` tag nor ``# NBVAL_RAISES_EXCEPTION``: a cell
that shows an error on purpose catches it and prints it instead (STYLE.md), which the first test
checks for every notebook, and the second proves by running each one under papermill (its
parameter cell kept at the defaults, which run offline on the tiny pipeline).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_cell_relies_on_an_error_being_tolerated(path: Path) -> None:
    for cell in json.loads(path.read_text())["cells"]:
        text = "".join(cell["source"])
        assert "raises-exception" not in cell.get("metadata", {}).get("tags", []), (path.name, text[:80])
        assert "NBVAL_RAISES_EXCEPTION" not in text, (path.name, text[:80])


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_under_papermill(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    papermill = pytest.importorskip("papermill")
    monkeypatch.chdir(tmp_path)  # the notebooks write their databases and images under the working folder
    out = tmp_path / path.name
    papermill.execute_notebook(str(path), str(out), kernel_name="python3", cwd=str(tmp_path), progress_bar=False)
    executed = json.loads(out.read_text())
    errors = [o for c in executed["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert errors == []
    assert all(c.get("execution_count") for c in executed["cells"] if c["cell_type"] == "code")
