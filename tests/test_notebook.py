"""The quickstart notebook runs top to bottom headless, and its training cells reach 95% on digits."""

import json
import os
import time

import nbformat
import pytest
from nbclient import NotebookClient

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(REPO, "notebooks", "quickstart.ipynb")


def test_notebook_is_committed_without_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(not cell.outputs and cell.execution_count is None for cell in code)


@pytest.mark.slow  # two digits trainings and a cost sweep
def test_quickstart_runs_and_both_methods_reach_95_percent(tmp_path, monkeypatch):
    monkeypatch.setenv("QUICKSTART_OUT", str(tmp_path))
    monkeypatch.delenv("XLA_FLAGS", raising=False)  # the kernel sees one CPU device, as a user would
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    start = time.monotonic()
    # A cell that raises fails the test (CellExecutionError names the cell and the traceback).
    NotebookClient(notebook, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": os.path.dirname(NOTEBOOK)}}).execute()
    print(f"notebook executed in {time.monotonic() - start:.0f} s")
    with open(tmp_path / "quickstart_results.json") as f:
        results = json.load(f)
    assert set(results) == {"rate_m", "bptt_m"}
    for method, result in results.items():
        assert result["test_accuracy"] >= 95.0, (method, result)
    figures = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs
               if "image/png" in output.get("data", {})]
    assert len(figures) == 3  # neuron, eligibility vs BPTT, cost
    eligibility_line = [output["text"] for cell in notebook.cells if cell.cell_type == "code"
                        for output in cell.outputs if "largest |eligibility" in output.get("text", "")]
    assert float(eligibility_line[0].split("=")[1]) < 1e-5
