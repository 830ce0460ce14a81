"""The quickstart notebook runs top to bottom (nbclient): tiny training, generation from its
checkpoint, and a plan, here of the tiny config for a v5e 2x2 slice instead of the 7B on v5p-64
(which takes minutes to compile). The install cell (tagged skip-ci) is left out. The kernel
starts outside the checkout, as in Colab (/content), with MIMO_JAX_REPO naming the checkout."""

import importlib.util
import os

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
NOTEBOOK = os.path.join(ROOT, "experiments", "notebooks", "quickstart.ipynb")

pytestmark = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("nbclient", "nbformat", "ipykernel",
                                                       "libtpu")),
    reason="needs nbclient, nbformat, ipykernel and libtpu (the test extra)")


def test_quickstart_runs_top_to_bottom(tmp_path, monkeypatch):
  import nbclient
  import nbformat

  nb = nbformat.read(NOTEBOOK, as_version=4)
  tags = [set(cell.metadata.get("tags", ())) for cell in nb.cells]
  assert sum("parameters" in t for t in tags) == 1 and sum("skip-ci" in t for t in tags) == 1
  nb.cells = [cell for cell, t in zip(nb.cells, tags) if "skip-ci" not in t]
  params = next(cell for cell in nb.cells if "parameters" in cell.metadata.get("tags", ()))
  params.source = "\n".join([
      "TRAIN_STEPS = 4",
      f"WORKDIR = {str(tmp_path / 'run')!r}",
      "PLAN_CONFIG = 'experiments/configs/tiny.py'",
      "PLAN_TOPOLOGY = 'v5e:2x2'",
      "PLAN_OVERRIDES = {'train.phase': 'understanding'}",
  ])
  elsewhere = tmp_path / "content"
  elsewhere.mkdir()
  monkeypatch.setenv("MIMO_JAX_REPO", ROOT)  # the kernel inherits the environment
  client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                   resources={"metadata": {"path": str(elsewhere)}})
  client.execute()  # raises CellExecutionError, with the cell and its traceback, on any error

  text = "\n".join(output.get("text", "") + str(output.get("data", {}).get("text/markdown", ""))
                   for cell in nb.cells if cell.cell_type == "code" for output in cell.outputs)
  assert f"checkout: {ROOT}" in text
  assert "finished after 4 steps" in text
  assert "text ids:" in text
  assert "**Verdict: fits**" in text and "train/understanding on v5e:2x2" in text
