"""The notebooks run top to bottom headless: the quickstart's training cells reach 95% on digits;
own_model's model trains with every method and its rate gradients equal BPTT's at T = 1."""

import json
import os
import re
import time

import nbformat
import pytest
from nbclient import NotebookClient

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(REPO, "notebooks", "quickstart.ipynb")
OWN_MODEL = os.path.join(REPO, "notebooks", "own_model.ipynb")


@pytest.mark.parametrize("path", [NOTEBOOK, OWN_MODEL])
def test_notebook_is_committed_without_outputs(path):
    notebook = nbformat.read(path, as_version=4)
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


@pytest.mark.slow  # compiles the eight methods of a small model (about a minute on 2 cores)
def test_own_model_notebook_runs_every_method_and_matches_bptt_at_one_step(monkeypatch):
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    notebook = nbformat.read(OWN_MODEL, as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": os.path.dirname(OWN_MODEL)}}).execute()
    text = "".join(output.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                   for output in cell.outputs)
    import ratebp_jax
    assert all(f"{method:10s} loss" in text for method in ratebp_jax.METHODS)
    lines = [line for line in text.splitlines() if line.startswith("T = 1:")]
    assert len(lines) == 2 and all(float(re.findall(r"[0-9.]+e[-+][0-9]+", line)[0]) < 1e-10 for line in lines), lines
    accuracy = float(text.split("test accuracy ")[1].split("%")[0])
    assert accuracy > 80, accuracy
