"""`python -m checks demo OUT.ipynb`: the drill executed in a Jupyter kernel with the reference solution swapped in.

The only part of the kit that runs a kernel (nbclient); grading and checking never need one.
"""
from __future__ import annotations

import os
import subprocess
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import nbformat
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError
from nbformat.v4.rwbase import rejoin_lines

from checks import notebook
from checks.drill import SWAP_VARIABLE
from checks.isolated import KIT_ROOT
from checks.verdict import Finding

NOTEBOOK = Path(KIT_ROOT, "lora_mock.ipynb")


class ThisInterpreter(KernelSpecManager):
    """Every kernel is this interpreter's ipykernel, whatever kernelspecs the machine has: the kernel runs this kit."""

    def get_kernel_spec(self, kernel_name):
        from ipykernel.kernelspec import RESOURCES, get_kernel_dict

        return self.kernel_spec_class(resource_dir=RESOURCES, **get_kernel_dict())


def _env() -> dict:
    env = dict(os.environ, **{SWAP_VARIABLE: "1"})
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [KIT_ROOT, os.environ.get("PYTHONPATH")]))
    return env


def run_cells(client: NotebookClient, nb, deadline: float, timeout: float) -> Finding | None:
    """Execute every cell in order, as "Run all" does; why it stopped early, or None if it ran through."""
    for index, cell in enumerate(nb.cells):
        where = f"cell {index + 1} (`{notebook.Cell(index + 1, cell.source, ()).first_line}`)"
        try:
            if time.monotonic() >= deadline:
                raise CellTimeoutError(f"no time left for {where}")
            client.execute_cell(cell, index, execution_count=client.code_cells_executed + 1)
        except CellExecutionError as exc:
            return Finding(f"the notebook stopped at {where}: {exc.ename}: {str(exc.evalue)[:120]}",
                           "run the notebook top to bottom (Restart & Run all) to see the error in place")
        except CellTimeoutError:
            return Finding(f"{where} was still running when the notebook's {timeout:g} s ran out",
                           "raise --timeout if the machine is only slow")
        except DeadKernelError:
            return Finding(f"the kernel died while running {where}", "a crash in native code, or out of memory")
    return None


def demo(out: Path, timeout: float, source: Path = NOTEBOOK) -> tuple[Finding | None, list[Path]]:
    """Execute a copy of the drill with the solution swapped in; write it to `out` (and `out`.html with nbconvert)."""
    try:
        nb = rejoin_lines(nbformat.from_dict(notebook.read(source)))  # sources as strings, as nbformat reads them
    except notebook.NotANotebook as exc:
        raise ValueError(str(exc)) from None
    deadline = time.monotonic() + timeout
    with tempfile.TemporaryDirectory(prefix="lora-drill-demo-") as scratch, ExitStack() as kernel:
        km = AsyncKernelManager(kernel_name="python3", kernel_spec_manager=ThisInterpreter())
        client = NotebookClient(nb, km=km, resources={"metadata": {"path": scratch}},
                                timeout_func=lambda cell: max(0.1, deadline - time.monotonic()),
                                startup_timeout=max(1, int(timeout)), shutdown_kernel="immediate")
        try:
            kernel.enter_context(client.setup_kernel(env=_env(), cwd=scratch, stdout=subprocess.DEVNULL,
                                                     stderr=subprocess.DEVNULL, cleanup_kc=True))
        except Exception as exc:
            stop = Finding(f"the notebook's kernel did not start: {type(exc).__name__}: {str(exc)[:120]}",
                           "check that ipykernel is installed in the Python that runs the kit")
        else:
            stop = run_cells(client, nb, deadline, timeout)
    nbformat.write(nb, out)
    written = [out]
    html = export_html(nb, out.with_suffix(".html"))
    return stop, written + ([html] if html else [])


def export_html(nb, path: Path) -> Path | None:
    """An HTML copy of `nb` at `path` when nbconvert is installed; None (and nothing written) when it is not."""
    try:
        from nbconvert import HTMLExporter
    except ImportError:
        return None
    body, _ = HTMLExporter().from_notebook_node(nb)
    path.write_text(body, encoding="utf-8")
    return path
