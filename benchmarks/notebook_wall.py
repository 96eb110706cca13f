"""Benchmark: the wall time of running lora_mock.ipynb (solution swapped in) against an import-only notebook.

Run from the repository root: python benchmarks/notebook_wall.py [--rounds N]. The notebook is copied to a
temporary directory and executed there with nbclient; the original is only read.
"""
import argparse
import datetime
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from common import REPO, interleave, machine, median_ratio, table

NOTEBOOK = "lora_mock.ipynb"
IMPORT_ONLY = "import_only.ipynb"
LAST_RUN = {}  # notebook name -> the notebook as last executed, with nbclient's per-cell timestamps


def import_only_notebook(path: Path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("import torch")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


def execute(path: Path) -> float:
    """Seconds to start a kernel, run every cell of a fresh read of `path`, and shut the kernel down."""
    nb = nbformat.read(path, as_version=4)
    env = {**os.environ, "LORA_DRILL_SOLUTION": "1"}
    client = NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}})
    start = time.perf_counter()
    client.execute(env=env)
    elapsed = time.perf_counter() - start
    LAST_RUN[path.name] = nb
    return elapsed


def slowest_cells(nb, count=3) -> list:
    """(seconds, code cell number, first line) of the cells that took longest, from nbclient's timestamps."""
    def stamp(cell, key):
        return datetime.datetime.fromisoformat(cell.metadata.execution[key].replace("Z", "+00:00"))
    code = [c for c in nb.cells if c.cell_type == "code" and "execution" in c.metadata]
    timed = [((stamp(c, "shell.execute_reply") - stamp(c, "iopub.execute_input")).total_seconds(), i + 1,
              c.source.splitlines()[0][:60] if c.source else "") for i, c in enumerate(code)]
    return sorted(timed, reverse=True)[:count]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        shutil.copy(REPO / NOTEBOOK, work / NOTEBOOK)
        import_only_notebook(work / IMPORT_ONLY)
        cells = sum(c.cell_type == "code" for c in nbformat.read(work / NOTEBOOK, as_version=4).cells)
        seconds = interleave({name: (lambda n=name: execute(work / n)) for name in (NOTEBOOK, IMPORT_ONLY)},
                             args.rounds)
    print(machine())
    print(f"nbclient execution of a copy of {NOTEBOOK} ({cells} code cells, LORA_DRILL_SOLUTION=1) and of a one-cell "
          f"`import torch` notebook, each with a fresh kernel, {args.rounds} interleaved rounds; "
          "ratio = median over median (median of the per-round ratios alongside).\n")
    rows = [[name, f"{statistics.median(s):.1f}", f"{min(s):.1f}", f"{max(s):.1f}"] for name, s in seconds.items()]
    print(table(["notebook", "median s", "fastest s", "slowest s"], rows))
    ratio = statistics.median(seconds[NOTEBOOK]) / statistics.median(seconds[IMPORT_ONLY])
    print(f"\nratio of medians: {ratio:.2f}; median of per-round ratios: "
          f"{median_ratio(seconds, NOTEBOOK, IMPORT_ONLY):.2f}")
    print(f"\nslowest cells of {NOTEBOOK} in the last round:")
    print(table(["code cell", "s", "first line"],
                [[number, f"{sec:.1f}", f"`{line}`"] for sec, number, line in slowest_cells(LAST_RUN[NOTEBOOK])]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
