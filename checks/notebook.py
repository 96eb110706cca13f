"""The one place that reads a notebook, and the rules for which of its cells a check run executes.

A notebook is judged by the class that a top-to-bottom run of it defines ("Restart & Run all"), with two kinds of
cell left out because they are the kit's, not the learner's, and the verdict does not need them:
  * the setup cell (tag `setup`), which finds or installs the kit: in its place, its top-level import statements
    run (torch, nn, F…) and `import checks` binds the grader's own kit;
  * statements that only call the kit (a strict test on the syntax tree, `kit_statement`): an expression
    statement calling `checks.…`, `lab.…`, `clock.…` or a name the notebook imported from `checks`, with only
    names and constants as arguments, like `checks.check_3(LoRALinear, trained=layer)` or `lab.latency(LoRALinear)`;
    an assignment of such a call on `checks.…`, `lab.…` or `clock.…` to plain names, like
    `mine = checks.test_my_checks(my_check_1, base=LoRALinear)` or `LoRALinear = checks.swap_in(LoRALinear)` (so
    the instructor's swap never runs); and a bare name or constant (it only displays). A cell with nothing else
    is skipped; imports always run. Such statements cannot change the learner's class, and they are the slow ones.
IPython's syntax (magics, shell lines, `obj?`) is turned into Python by IPython's own transformer (to_python). An
assignment of a kit call that is skipped binds its names to a stand-in, so later cells that read them still run.
Nothing here imports torch.
"""
from __future__ import annotations

import ast
import io
import json
import tokenize
from dataclasses import dataclass
from pathlib import Path

KIT_NAMES = frozenset({"checks", "lab", "clock"})  # the names the shipped notebook gives the kit


class NotANotebook(Exception):
    """The file could not be read as a notebook; the message says why."""


@dataclass(frozen=True)
class Cell:
    number: int  # 1-based among all cells, as Jupyter counts them
    source: str
    tags: tuple

    @property
    def first_line(self) -> str:
        line = next((s.strip() for s in self.source.splitlines() if s.strip()), "")
        return line if len(line) <= 60 else line[:59] + "…"


def read(path) -> dict:
    """The notebook at `path` as a dict (nbformat 4's JSON); raises NotANotebook naming what is wrong.
    A UTF-8 byte-order mark at the start is allowed."""
    path = Path(path)
    try:
        nb = json.loads(path.read_bytes().decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise NotANotebook(f"{path.name} is not a valid notebook: it is not UTF-8 text ({exc.reason})") from None
    except ValueError:
        raise NotANotebook(f"{path.name} is not a valid notebook: it is not JSON (a file cut short, or not a "
                           "notebook at all)") from None
    cells = nb.get("cells") if isinstance(nb, dict) else None
    if not isinstance(cells, list) or not all(isinstance(c, dict) and "cell_type" in c for c in cells):
        raise NotANotebook(f"{path.name} is not a valid notebook: it has no list of cells")
    if nb.get("nbformat", 4) < 4:
        raise NotANotebook(f"{path.name} is an nbformat {nb.get('nbformat')} notebook; open it in Jupyter and "
                           "save it again to upgrade it to nbformat 4")
    return nb


def _text(source) -> str:
    return "".join(source) if isinstance(source, list) else str(source or "")


def code_cells(nb: dict) -> list[Cell]:
    return [Cell(i + 1, _text(c.get("source")), tuple(c.get("metadata", {}).get("tags", ())))
            for i, c in enumerate(nb["cells"]) if c.get("cell_type") == "code"]


NOT_RUN = "__grader_not_run__"  # the name a skipped kit assignment binds its targets to (checks/loading.py)


def to_python(source: str) -> str:
    """A cell as plain Python: IPython's own transformer turns magics, shell lines and `obj?` into calls of
    get_ipython() (the worker defines a stand-in, checks/loading.py), exactly where IPython would; without IPython,
    magic and shell lines become comments (without_magics)."""
    try:
        from IPython.core.inputtransformer2 import TransformerManager
    except ImportError:
        return without_magics(source)
    try:
        return TransformerManager().transform_cell(source)
    except Exception:  # noqa: BLE001  IPython could not read the cell: compile it as it is, to name the error
        return without_magics(source)


def without_magics(source: str) -> str:
    """IPython's %magic and !shell lines become comments: plain Python runs the rest. A line is a magic only where
    a statement may start, as in IPython: not inside brackets, a string or a backslash continuation, so that
    `    != self.in_features):` continuing a condition stays code."""
    kept: list[str] = []
    for line in source.splitlines():
        magic = line.lstrip().startswith(("%", "!")) and _statement_may_start(kept)
        kept.append("# " + line if magic else line)
    return "\n".join(kept)


def _statement_may_start(lines: list[str]) -> bool:
    """Whether the code in `lines` leaves no bracket, string or backslash continuation open."""
    try:
        for _ in tokenize.generate_tokens(io.StringIO("\n".join(lines) + "\n").readline):
            pass
    except (tokenize.TokenError, SyntaxError):  # EOF inside a bracket or a string (or code tokenize cannot read)
        return False
    return True


def _plain(node) -> bool:
    return isinstance(node, (ast.Name, ast.Constant))


def _kit_call(node, kit_names, attribute_only: bool) -> bool:
    if not isinstance(node, ast.Call):
        return False
    root = node.func
    while isinstance(root, ast.Attribute):
        root = root.value
    rooted = isinstance(root, ast.Name) and (root.id in KIT_NAMES if attribute_only else root.id in kit_names)
    return (rooted and (isinstance(node.func, ast.Attribute) or not attribute_only)
            and all(_plain(a) for a in node.args) and all(k.arg and _plain(k.value) for k in node.keywords))


def kit_statement(node, kit_names) -> bool:
    """True for a statement that only calls the kit or displays a value (see the module's docstring)."""
    if isinstance(node, ast.Expr):
        return _plain(node.value) or _kit_call(node.value, kit_names, attribute_only=False)
    if isinstance(node, ast.Assign):
        return all(isinstance(t, ast.Name) for t in node.targets) and _kit_call(node.value, kit_names, True)
    return False


def learner_part(source: str, kit_names: set) -> ast.Module | None:
    """The cell's statements without the kit's (None when nothing is left); the names it imports from `checks`
    join `kit_names`. Raises SyntaxError for a cell that does not parse."""
    tree = ast.parse(to_python(source))
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "checks":
            kit_names.update(alias.asname or alias.name for alias in node.names)
    kept = []
    for node in tree.body:
        if not kit_statement(node, kit_names):
            kept.append(node)
        elif isinstance(node, ast.Assign):  # names it would bind anew are bound to a stand-in, so later cells
            for target in node.targets:    # that read them run; a name already bound keeps its value, and
                if target.id != "LoRALinear":  # LoRALinear (the swap's) is the learner's class or nothing
                    kept += ast.parse(f"if {target.id!r} not in globals():\n    {target.id} = {NOT_RUN}\n").body
    if not kept:
        return None
    tree.body = kept
    return ast.fix_missing_locations(tree)


def setup_imports(source: str) -> str:
    """What a check run executes for the setup cell: its top-level imports, then `import checks` (the grader's)."""
    try:
        body = ast.parse(to_python(source)).body
    except SyntaxError:
        body = []
    imports = [ast.unparse(node) for node in body if isinstance(node, (ast.Import, ast.ImportFrom))]
    return "\n".join([*imports, "import checks"]) + "\n"


def output_problem(out: Path, drill: Path, example: str) -> str:
    """Why `out` cannot take a notebook the kit writes ("" if it can): it must end in .ipynb, sit in a folder that
    exists, not be a folder, and not be the drill's own notebook, which the kit builds from and never overwrites;
    and that notebook must be there (the kit runs from a clone)."""
    if out.suffix != ".ipynb":
        return f"{out} does not end in .ipynb; name it like {example}"
    if not out.parent.is_dir():
        return f"the folder {out.parent} does not exist; create it (mkdir -p {out.parent}) or name another place"
    if out.exists() and out.resolve() == drill.resolve():
        return f"{out} is the drill's own notebook, which the kit builds from and never overwrites; name another file"
    if out.is_dir():
        return f"{out} is a folder; name the file, like {out / example}"
    if not drill.is_file():
        return f"the drill's notebook is not at {drill}; run this from a clone of the kit (pip install -e .)"
    return ""
