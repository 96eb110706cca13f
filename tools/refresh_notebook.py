"""Re-run lora_mock.ipynb with the reference solution swapped in and store the outputs nbval compares.

Only cells tagged `nbval-check-output` keep their outputs (check results, parameter counts, shapes: what a
passing layer prints, so a learner sees what to expect); every other cell is stored without outputs, so the
notebook never ships a traceback or a stale timing. Run it after editing the notebook or the checks' messages:
    python tools/refresh_notebook.py
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "lora_mock.ipynb"
COMPARED = "nbval-check-output"


def refresh(path: Path = NOTEBOOK) -> None:
    nb = nbformat.read(path, as_version=4)
    os.environ["LORA_DRILL_SOLUTION"] = "1"  # the kernel inherits it
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        if COMPARED not in cell.metadata.get("tags", []):
            cell.outputs, cell.execution_count = [], None
        cell.metadata.pop("execution", None)
    nbformat.write(nb, path)


if __name__ == "__main__":
    refresh(Path(sys.argv[1]) if len(sys.argv) > 1 else NOTEBOOK)
