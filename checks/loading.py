"""A learner's file (.py, or a notebook .ipynb) → the LoRALinear class it defines. Runs in the worker only.

A .py file runs as a module named `learner`. A notebook runs as "Restart & Run all" would run it: its code cells in
order, in one namespace, stopping at the first cell that raises; the kit's own cells are left out as
checks/notebook.py describes. The class judged is the one the run leaves behind, so helpers in earlier cells
count, and so does a later cell that changes the class. Nothing is imported on the learner's behalf.
"""
from __future__ import annotations

import builtins
import difflib
import linecache
from pathlib import Path

from checks import notebook
from checks.probe import describe
from checks.verdict import Finding


class LoadError(Exception):
    """The file gave no LoRALinear class; `finding` says why and what to do."""

    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.finding = Finding(message, hint)


class _CellFailed(Exception):
    def __init__(self, finding: Finding):
        super().__init__(finding.message)
        self.finding = finding


def _compile(source: str, filename: str):
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    return compile(source, filename, "exec", dont_inherit=True)  # none of the kit's __future__ flags


def _run_file(path: Path, namespace: dict) -> None:
    source = path.read_bytes().decode("utf-8-sig", errors="replace")
    try:
        code = _compile(source, str(path))
    except SyntaxError as exc:
        raise LoadError(f"{path.name}, line {exc.lineno}: {exc.msg} (SyntaxError)",
                        "fix the syntax there and run again") from exc
    try:
        exec(code, namespace)
    except SystemExit as exc:
        raise LoadError(f"{path.name} called sys.exit({exc.code!r}) while being loaded",
                        "remove the exit; the checks need the file to define LoRALinear and return") from exc
    except Exception as exc:
        hint = ("the file is checked on its own (graded from a copy, alone in its folder): put helpers in the file "
                "itself, not in a module beside it" if isinstance(exc, ModuleNotFoundError) else
                "fix the error and run again")
        raise LoadError(f"running {path.name} raised {describe(exc)}", hint) from exc


def _run_cell(cell: notebook.Cell, source, name: str, namespace: dict) -> None:
    """Run one cell: `source` is its text, or the syntax tree of its statements that are the learner's."""
    where = f"cell {cell.number} (`{cell.first_line}`)"
    hint = "run the notebook top to bottom (Restart & Run all) to see the error in place"
    filename = f"<{name} cell {cell.number}>"
    if isinstance(namespace.get("get_ipython"), _Shell):
        namespace["get_ipython"].filename = filename  # where a %%time cell's body is compiled
    try:
        if isinstance(source, str):
            code = _compile(source, filename)
        else:  # the cell's own text is what tracebacks and inspect.getsource show
            _compile(notebook.to_python(cell.source), filename)
            code = compile(source, filename, "exec", dont_inherit=True)
    except SyntaxError as exc:
        raise _CellFailed(Finding(f"the notebook stopped at {where}: SyntaxError: {exc.msg} (line {exc.lineno} of "
                                  "the cell)", "fix the syntax in that cell and run it again")) from exc
    try:
        exec(code, namespace)
    except SystemExit as exc:
        raise _CellFailed(Finding(f"the notebook stopped at {where}: it called sys.exit({exc.code!r})",
                                  "remove the exit from that cell")) from exc
    except Exception as exc:
        raise _CellFailed(Finding(f"the notebook stopped at {where}: {describe(exc)}", hint)) from exc


def _run_notebook(path: Path, namespace: dict, before_cell) -> Finding | None:
    """Run the cells in order; the Finding says where the run stopped, None when it ran to its end."""
    try:
        nb = notebook.read(path)
    except notebook.NotANotebook as exc:
        raise LoadError(str(exc), "open it in Jupyter and save it again, or check a .py file instead") from None
    kit_names = set(notebook.KIT_NAMES)
    for cell in notebook.code_cells(nb):
        if "setup" in cell.tags:
            source = notebook.setup_imports(cell.source)
        else:
            try:
                source = notebook.learner_part(cell.source, kit_names)
            except SyntaxError:
                source = notebook.to_python(cell.source)  # compiled as it is, to report the error
            if source is None:
                continue
        if before_cell:
            before_cell(cell)
        try:
            _run_cell(cell, source, path.name, namespace)
        except _CellFailed as failed:
            return failed.finding
    return None


def _display(*objects, **_options) -> None:
    """IPython's `display`, which a notebook may call without importing it: here it prints each object."""
    for obj in objects:
        print(repr(obj))


class _NotRun:
    """What a skipped statement of the kit (`results = checks.run_all(...)`) leaves in its names: reading,
    printing, calling or iterating it works, so a later cell that uses it still runs."""

    def __repr__(self) -> str:
        return "<not run by the grader>"

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return self

    def __call__(self, *args, **kwargs):
        return self

    def __getitem__(self, key):
        return self

    def __iter__(self):
        return iter(())

    def __len__(self) -> int:
        return 0

    def __format__(self, spec: str) -> str:
        return repr(self)


class _Shell:
    """The get_ipython() of a notebook run by the worker: magics, shell lines and help do nothing, except the cell
    magics whose body is Python (%%time, %%timeit, %%capture, %%prun), whose body runs once, here."""

    PYTHON_BODIES = ("time", "timeit", "capture", "prun")

    def __init__(self, namespace: dict):
        self.namespace, self.filename = namespace, "<cell>"

    def __call__(self):  # bound as `get_ipython` itself
        return self

    def run_cell_magic(self, name, line, body):
        if name in self.PYTHON_BODIES:
            exec(_compile(notebook.to_python(body), self.filename), self.namespace)

    def run_line_magic(self, name, line, *args, **kwargs):
        return None

    def system(self, command, *args, **kwargs):
        return None

    def getoutput(self, command, *args, **kwargs):
        return []

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return lambda *args, **kwargs: None


def load(path, before_cell=None) -> tuple[type, Finding | None]:
    """Run the learner's file; return its LoRALinear class and, for a notebook, where its run stopped early.

    `before_cell(cell)` is called before each notebook cell runs. Raises LoadError when there is no class."""
    path = Path(path)
    stopped = None
    if path.suffix == ".ipynb":
        namespace = {"__name__": "__main__", "__builtins__": builtins, "display": _display,
                     notebook.NOT_RUN: _NotRun()}
        namespace["get_ipython"] = _Shell(namespace)
        stopped = _run_notebook(path, namespace, before_cell)
    else:
        namespace = {"__name__": "learner", "__file__": str(path), "__builtins__": builtins}
        _run_file(path, namespace)
    cls = namespace.get("LoRALinear")
    if isinstance(cls, type):
        return cls, stopped
    if stopped and "SyntaxError" in stopped.message:  # a syntax error in the class's own cell, most likely
        raise LoadError(stopped.message, stopped.hint)
    classes = [k for k, v in namespace.items() if isinstance(v, type) and not k.startswith("_")]
    near = difflib.get_close_matches("LoRALinear", classes, n=1, cutoff=0.6)
    found = f"; it defines {', '.join(classes[:5])}" if classes else ""
    seen = f" (LoRALinear is a {type(cls).__name__})" if cls is not None and not isinstance(cls, _NotRun) else ""
    hint = f"rename {near[0]} to LoRALinear" if near else "define `class LoRALinear(nn.Module)`"
    what = "the notebook never defined" if path.suffix == ".ipynb" else f"{path.name} does not define"
    after = f"; {stopped.message}" if stopped else ""
    raise LoadError(f"{what} a class named LoRALinear{seen}{found}{after}", hint)
