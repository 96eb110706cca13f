"""Drift guard: the notebook's stub and solution/ agree on the interface, and the notebook never shows the solution."""
import ast
import inspect
import re
from pathlib import Path

import nbformat
import pytest

from solution import LoRALinear as Reference

ROOT = Path(__file__).resolve().parent.parent
DRILL = ROOT / "lora_mock.ipynb"
SOLUTION_FILE = ROOT / "solution" / "lora.py"
SHAPE_NAMES = {"in_features": 5, "out_features": 3, "r": 2, "alpha": 6}  # one layer, sizes all different


def shipped():
    return nbformat.read(DRILL, as_version=4)


def stub_source(nb) -> str:
    cells = [c for c in nb.cells if "lora-stub" in c.metadata.get("tags", [])]
    assert len(cells) == 1, f"lora_mock.ipynb should have one cell tagged lora-stub; found {len(cells)}"
    return cells[0].source


def stub_class(source: str) -> ast.ClassDef:
    classes = [n for n in ast.parse(source).body if isinstance(n, ast.ClassDef) and n.name == "LoRALinear"]
    assert len(classes) == 1, "the stub cell should define class LoRALinear once"
    return classes[0]


def def_signature(fn: ast.FunctionDef) -> list[tuple[str, object]]:
    """[(name, default or inspect.Parameter.empty)] of a def, self left out."""
    args = fn.args.args[1:]
    defaults = [inspect.Parameter.empty] * (len(args) - len(fn.args.defaults))
    defaults += [ast.literal_eval(d) for d in fn.args.defaults]
    return [(a.arg, d) for a, d in zip(args, defaults)]


def class_signature(cls) -> list[tuple[str, object]]:
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    return [(p.name, p.default) for p in params if p.kind is p.POSITIONAL_OR_KEYWORD]


def contract(docstring: str) -> dict:
    """The stub docstring's contract: the constructor call it shows, the attributes with any `# (shape)` or value
    it gives them, and the methods it lists with any `# (shape)` of their result."""
    lines = docstring.splitlines()
    call = next(ast.parse(line.strip(), mode="eval").body for line in lines if line.strip().startswith("LoRALinear("))
    signature = [(a.id, inspect.Parameter.empty) for a in call.args]
    signature += [(k.arg, ast.literal_eval(k.value)) for k in call.keywords]
    start = next(i for i, line in enumerate(lines) if line.strip() == "attributes:")
    indent = len(lines[start]) - len(lines[start].lstrip())
    attributes, methods = {}, {}
    for line in lines[start + 1:]:
        depth = len(line) - len(line.lstrip())
        shape = re.search(r"#\s*(\([^)]*\))", line)
        if line.strip() and depth > indent:  # an attribute line: "names   what they are"
            names, _, rest = line.strip().partition("  ")
            for name in names.split(","):
                attributes[name.strip()] = shape.group(1) if shape else rest.split("#")[0].strip()
        elif re.match(r"\s*(\w+)\(.*?\):", line):
            methods[re.match(r"\s*(\w+)\(", line).group(1)] = shape.group(1) if shape else ""
        elif line.strip():
            break
    return {"signature": signature, "attributes": attributes, "methods": methods}


def interface_drift(source: str, reference) -> list[str]:
    """Every way the stub in `source` (its def and its docstring) disagrees with the reference class."""
    cls = stub_class(source)
    init = next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "__init__")
    said = contract(ast.get_docstring(cls))
    problems = []
    for where, signature in (("the stub's def", def_signature(init)), ("the stub's docstring", said["signature"])):
        if signature != class_signature(reference):
            problems.append(f"{where} has __init__{signature}; solution/ has {class_signature(reference)}")
    layer = reference(**SHAPE_NAMES)
    for name, documented in said["attributes"].items():
        if not hasattr(layer, name):
            problems.append(f"the docstring documents attribute {name!r}; solution/'s layer has none")
        elif name in SHAPE_NAMES and getattr(layer, name) != SHAPE_NAMES[name]:
            problems.append(f"{name} should keep the constructor's {SHAPE_NAMES[name]}; "
                            f"solution/ has {getattr(layer, name)}")
        elif documented.startswith("("):
            problems += _shape_drift(name, documented, tuple(getattr(layer, name).shape))
        elif re.fullmatch(r"[\w\s/*+-]+", documented):  # arithmetic over the constructor's names
            value = eval(documented, {"__builtins__": {}}, SHAPE_NAMES)  # e.g. "alpha / r"
            if abs(getattr(layer, name) - value) > 1e-12:
                problems.append(f"{name} is documented as {documented} = {value}; solution/ has {getattr(layer, name)}")
    stub_methods = {n.name for n in cls.body if isinstance(n, ast.FunctionDef)}
    for name, documented in said["methods"].items():
        if not callable(getattr(reference, name, None)) or name not in stub_methods:
            problems.append(f"the docstring documents {name}(); the stub defines it: {name in stub_methods}, "
                            f"solution/ does: {callable(getattr(reference, name, None))}")
        elif documented and name != "forward":
            problems += _shape_drift(f"{name}()", documented, tuple(getattr(layer, name)().shape))
    return problems


def _shape_drift(name: str, documented: str, actual: tuple) -> list[str]:
    expected = eval(documented, {"__builtins__": {}}, SHAPE_NAMES)
    if expected == actual:
        return []
    return [f"{name} is documented as {documented} = {expected}; solution/ gives {actual}"]


def _normalised(line: str) -> str:
    """A line of code without its indentation and comment ("" for a comment line), so formatting cannot hide it."""
    return line.split("#", 1)[0].strip()


def solution_body_lines(path: Path = SOLUTION_FILE) -> set[str]:
    """The code lines of every method body in solution/'s LoRALinear, comments and docstrings left out."""
    source = path.read_text(encoding="utf-8")
    cls = next(n for n in ast.parse(source).body if isinstance(n, ast.ClassDef) and n.name == "LoRALinear")
    lines = set()
    for fn in (n for n in cls.body if isinstance(n, ast.FunctionDef)):
        body = fn.body[1:] if ast.get_docstring(fn) else fn.body
        for statement in body:
            lines.update(_normalised(s) for s in ast.get_source_segment(source, statement).splitlines())
    # The stub itself must call super().__init__(); that line gives nothing away.
    return {line for line in lines if len(line) >= 10 and line != "super().__init__()"}


def leaked_lines(nb) -> list[str]:
    """Lines of solution/'s method bodies that appear in any cell of `nb`, its source or its stored outputs."""
    forbidden = solution_body_lines()
    found = []
    for index, cell in enumerate(nb.cells):
        texts = [cell.source] + [str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", ""))
                                 for o in cell.get("outputs", [])]
        found += [f"cell {index + 1}: {line}" for text in texts for line in map(_normalised, text.splitlines())
                  if line in forbidden]
    return found


def test_the_contract_parser_reads_what_the_stub_documents():
    said = contract(ast.get_docstring(stub_class(stub_source(shipped()))))
    assert {"in_features", "out_features", "r", "scaling", "base", "A", "B"} <= said["attributes"].keys()
    assert {"forward", "merged_weight"} <= said["methods"].keys()


def test_the_stub_and_the_solution_share_one_interface():
    assert interface_drift(stub_source(shipped()), Reference) == []


@pytest.mark.parametrize("edit", [
    ("alpha=8, bias=True):", "alpha=16, bias=True):"),  # a default changed in the def only
    ("r=4, alpha=8, bias=True)\n", "r=4, alpha=8)\n"),  # the docstring's call drops a parameter
    ("scaling  alpha / r", "scaling  alpha"),  # the documented scaling is wrong
    ("A        nn.Parameter  # (r, in_features)", "A        nn.Parameter  # (in_features, r)"),
    ("B        nn.Parameter", "C        nn.Parameter"),  # an attribute solution/ does not have
])
def test_the_drift_guard_sees_a_stub_that_drifted(edit):
    source = stub_source(shipped())
    assert edit[0] in source, f"the stub no longer contains {edit[0]!r}: update this test's edits"
    assert interface_drift(source.replace(edit[0], edit[1], 1), Reference)


def test_the_shipped_notebook_never_contains_the_solutions_body():
    assert solution_body_lines(), "no body lines found in solution/lora.py: the guard would pass vacuously"
    assert leaked_lines(shipped()) == []


def test_the_leak_guard_sees_the_solution_pasted_into_the_stub_cell():
    nb = shipped()
    cell = next(c for c in nb.cells if "lora-stub" in c.metadata.get("tags", []))
    cell.source = SOLUTION_FILE.read_text(encoding="utf-8")
    assert leaked_lines(nb)
