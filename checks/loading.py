"""A learner's file (.py, or a notebook .ipynb) → the LoRALinear class it defines.

This runs the learner's code, so the command line calls it only inside the worker process. From a notebook
it runs just the cell that defines `class LoRALinear`, after the cells that only import and a prelude of the
usual imports, so a hanging training loop or a stub elsewhere in the notebook never gets in the way.
"""
from __future__ import annotations

import ast
import difflib
import linecache
import re
from pathlib import Path

from checks.probe import describe

PRELUDE = "import math\nimport torch\nfrom torch import nn\nimport torch.nn.functional as F\n"
_DEFINES_CLASS = re.compile(r"^class\s+LoRALinear\b", re.MULTILINE)


class LoadError(Exception):
    """The file could not give us a LoRALinear class; `message` says why and `hint` what to do."""

    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.message, self.hint = message, hint


def _run(source: str, filename: str, namespace: dict) -> None:
    """Compile and run one piece of learner code, registering it so tracebacks can quote its lines."""
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    try:
        code = compile(source, filename, "exec")
    except SyntaxError as exc:
        raise LoadError(f"{filename}, line {exc.lineno}: {exc.msg} (SyntaxError)",
                        "fix the syntax there and run again") from exc
    try:
        exec(code, namespace)
    except SystemExit as exc:
        raise LoadError(f"{filename} called sys.exit({exc.code!r}) while being loaded",
                        "remove the exit; the checks need the file to define LoRALinear and return") from exc
    except Exception as exc:
        raise LoadError(f"running {filename} raised {describe(exc)}", "fix the error and run again") from exc


def _without_magics(source: str) -> str:
    """IPython's %magic and !shell lines become comments: plain Python runs the rest."""
    return "\n".join("# " + line if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines())


def _only_imports(source: str) -> bool:
    try:
        body = ast.parse(source).body
    except SyntaxError:
        return False
    return bool(body) and all(isinstance(node, (ast.Import, ast.ImportFrom)) for node in body)


def _notebook_cells(path: Path) -> list[str]:
    import nbformat

    try:
        nb = nbformat.read(path, as_version=4)
    except Exception as exc:  # nbformat raises several kinds: not JSON, not a notebook, unreadable
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LoadError(f"{path.name} is not a valid notebook: {first_line}",
                        "open it in Jupyter and save it again, or check a .py file instead") from None
    return [_without_magics(cell.source) for cell in nb.cells if cell.cell_type == "code"]


def load_class(path) -> type:
    """Run the learner's file and return its LoRALinear class, or raise LoadError saying why not."""
    path = Path(path)
    namespace = {"__name__": "learner", "__file__": str(path)}
    if path.suffix == ".ipynb":
        cells = _notebook_cells(path)
        defining = [i for i, src in enumerate(cells) if _DEFINES_CLASS.search(src)]
        if not defining:
            raise LoadError(f"no code cell of {path.name} defines `class LoRALinear`",
                            "keep the class in its own cell, starting with `class LoRALinear(nn.Module):`")
        _run(PRELUDE, "<prelude>", namespace)
        for i, src in enumerate(cells[:defining[-1]]):
            if _only_imports(src):
                _run(src, f"<{path.name} cell {i + 1}>", namespace)
        _run(cells[defining[-1]], f"<{path.name} cell {defining[-1] + 1}>", namespace)
    else:
        _run(path.read_text(encoding="utf-8", errors="replace"), str(path), namespace)
    cls = namespace.get("LoRALinear")
    if not isinstance(cls, type):
        classes = [k for k, v in namespace.items() if isinstance(v, type) and v.__module__ == "learner"]
        near = difflib.get_close_matches("LoRALinear", classes, n=1, cutoff=0.6)
        found = f"; it defines {', '.join(classes)}" if classes else ""
        hint = f"rename {near[0]} to LoRALinear" if near else "define `class LoRALinear(nn.Module)`"
        raise LoadError(f"{path.name} does not define a class named LoRALinear{found}", hint)
    return cls
