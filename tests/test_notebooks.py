"""Runs every examples/*.ipynb top to bottom in a fresh Jupyter kernel (nbclient): a cell that raises fails
the test, and so does a notebook that runs past its time limit (NOTEBOOK_TIMEOUT seconds for the whole
notebook, 600 by default). The examples are sized for about 2 minutes each on 2 idle CPU cores (the test
prints each one's time); the limit only catches a hang, so a slow or busy CI machine does not fail them.

    pytest tests/test_notebooks.py -n 2        # one notebook per worker

Skipped when nbclient / nbformat / ipykernel are not installed (`pip install -e .[dev]` installs them).
"""

from __future__ import annotations

import glob
import os
import time

import ipykernel  # noqa: F401  (the kernel the notebooks run in; the dev extra installs all three)
import nbclient
import nbformat
import pytest

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
NOTEBOOKS = sorted(glob.glob(os.path.join(EXAMPLES, "*.ipynb")))
TIMEOUT_S = float(os.environ.get("NOTEBOOK_TIMEOUT", "600"))


def _error_text(cell) -> str:
  for out in cell.get("outputs", []):
    if out.get("output_type") == "error":
      return f"{out.get('ename')}: {out.get('evalue')}"
  return "(no error output)"


def run_notebook(path: str, timeout_s: float = TIMEOUT_S) -> float:
  """Executes the notebook at `path` in its own directory; returns the seconds it took.

  The limit is for the whole notebook: each cell gets the time that is left.
  """
  nb = nbformat.read(path, as_version=4)
  client = nbclient.NotebookClient(nb, kernel_name="python3", allow_errors=False,
                                   resources={"metadata": {"path": os.path.dirname(path)}})
  start = time.perf_counter()
  with client.setup_kernel():
    for index, cell in enumerate(nb.cells):
      left = timeout_s - (time.perf_counter() - start)
      if left <= 0:
        pytest.fail(f"{os.path.basename(path)} ran past {timeout_s:.0f} s before cell {index}")
      client.timeout = max(1, int(left))
      try:
        client.execute_cell(cell, index)
      except nbclient.exceptions.CellTimeoutError:
        pytest.fail(f"{os.path.basename(path)}: cell {index} ran past the notebook's {timeout_s:.0f} s")
      except nbclient.exceptions.CellExecutionError:
        pytest.fail(f"{os.path.basename(path)}: cell {index} failed: {_error_text(cell)}")
  return time.perf_counter() - start


def test_examples_exist():
  assert len(NOTEBOOKS) >= 4, f"expected the example notebooks in {EXAMPLES}"


def test_examples_are_stripped():
  """Notebooks are kept without outputs (small diffs; the test and the reader produce them)."""
  for path in NOTEBOOKS:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)]
    assert not dirty, f"{os.path.basename(path)}: cells {dirty} have outputs (strip them before committing)"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[os.path.basename(p) for p in NOTEBOOKS])
def test_notebook_runs(path):
  seconds = run_notebook(path)
  print(f"{os.path.basename(path)}: {seconds:.0f} s")
