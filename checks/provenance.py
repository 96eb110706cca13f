"""Whose code is it? Fingerprints of code objects and sources, compared with the kit's own.

A learner's `LoRALinear` is the kit's, not the learner's, when any class in its MRO (object and nn.Module aside)
  * has a method whose code was compiled from a file in the kit's solution/, tests/ or checks/ (co_filename);
  * has `forward` and `__init__` whose code-object fingerprints, or whose source hashes, equal those of the
    `forward` and `__init__` of one class of the reference solution (solution/): the solution exec'd from its
    source text, pasted, or its code objects relabelled.
Only the solution's classes are compared, and only method with method of the same name, both of one class: the
plainest correct layer, written from the contract and the hints, has the same code as some of the kit's own test
layers (and the same `__init__` as the solution), and must not be taken for the kit's. The tests' layers are
guarded by the filename rule and by the worker's guard, which refuses reading them.
A fingerprint is SHA-256 over co_code, the names, the constants (nested code objects recursively, sets sorted)
and the argument counts, not over file names or line numbers; a source hash is SHA-256 over the function's
syntax tree (`ast.dump`) without its docstring, so comments and layout do not count. `__module__` is not trusted.

The worker describes the learner's class (`describe_class`) and the check registry (`describe_checks`); the parent,
which never imports torch, compares them with fingerprints it computes from the kit's source files.
"""
from __future__ import annotations

import ast
import hashlib
import inspect
import os
import textwrap
import types
from pathlib import Path

KIT_PARTS = ("solution", "tests", "checks")  # folders under the kit's root whose code is the kit's
COMPARED = ("forward", "__init__")


def _const(value) -> str:
    if isinstance(value, frozenset):
        return "frozenset(" + ",".join(sorted(map(_const, value))) + ")"
    if isinstance(value, tuple):
        return "(" + ",".join(map(_const, value)) + ")"
    return repr(value)


def _feed(h, code: types.CodeType) -> None:
    h.update(code.co_code)
    h.update(repr((code.co_names, code.co_varnames, code.co_freevars, code.co_cellvars, code.co_argcount,
                   code.co_posonlyargcount, code.co_kwonlyargcount)).encode())
    for value in code.co_consts:
        if isinstance(value, types.CodeType):
            h.update(b"<code>")
            _feed(h, value)
        else:
            h.update(_const(value).encode() + b"\0")


def fingerprint(code: types.CodeType) -> str:
    h = hashlib.sha256()
    _feed(h, code)
    return h.hexdigest()


def _tree_hash(node: ast.AST) -> str:
    node = _strip_docstring(node)
    return hashlib.sha256(ast.dump(node, annotate_fields=False).encode()).hexdigest()


def _strip_docstring(node):
    body = getattr(node, "body", None)
    if (isinstance(body, list) and body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)):
        node.body = body[1:] or [ast.Pass()]
    return node


def source_hash(fn) -> str:
    """The hash of a function's syntax tree, docstring left out; "" when its source cannot be found."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    except (OSError, TypeError, SyntaxError, IndentationError):
        return ""
    node = tree.body[0] if tree.body else None
    return _tree_hash(node) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) else ""


def _functions(value) -> list:
    if isinstance(value, (staticmethod, classmethod)):
        value = value.__func__
    if isinstance(value, property):
        return [f for f in (value.fget, value.fset, value.fdel) if isinstance(f, types.FunctionType)]
    return [value] if isinstance(value, types.FunctionType) else []


def describe_class(cls, skip=()) -> list[dict]:
    """Worker side: every class in `cls`'s MRO but object and `skip`, with each method's file and fingerprints."""
    described = []
    for klass in getattr(cls, "__mro__", (cls,)):
        if klass is object or any(klass is s for s in skip):
            continue
        methods = []
        for name, value in list(vars(klass).items()):
            for fn in _functions(value):
                methods.append({"name": name, "file": fn.__code__.co_filename, "code": fingerprint(fn.__code__),
                                "source": source_hash(fn)})
        described.append({"class": str(getattr(klass, "__qualname__", "?")), "methods": methods})
    return described


def describe_checks(registry) -> list[list]:
    """Worker side: [id, name, qualname, file, fingerprint] for each (id, name, fn) of the check registry."""
    rows = []
    for number, name, fn in registry:
        code = getattr(fn, "__code__", None)
        if code is None:
            rows.append([number, name, repr(fn)[:80], "", ""])
        else:
            rows.append([number, name, getattr(code, "co_qualname", code.co_name), code.co_filename,
                         fingerprint(code)])
    return rows


# ------------------------------------------------------------------------------------------ the parent's side


def _code_objects(code: types.CodeType):
    yield code
    for value in code.co_consts:
        if isinstance(value, types.CodeType):
            yield from _code_objects(value)


def file_index(path: Path) -> tuple[dict, dict]:
    """(qualname -> fingerprint, qualname -> source hash) for every function compiled from the file at `path`."""
    source = path.read_text(encoding="utf-8")
    by_name = {}
    module = compile(source, str(path), "exec", dont_inherit=True)
    for code in _code_objects(module):
        if code is not module:
            by_name[getattr(code, "co_qualname", code.co_name)] = fingerprint(code)
    sources = {}

    def visit(node, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                sources[prefix + child.name] = _tree_hash(child)
                visit(child, f"{prefix}{child.name}.<locals>.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
    visit(ast.parse(source), "")
    return by_name, sources


class KitIndex:
    """Which files are the kit's (solution/, tests/, checks/), and the fingerprints and source hashes of the
    methods of the reference solution's classes."""

    def __init__(self, root):
        self.root = Path(root).resolve()
        self.dirs = tuple(str(self.root / part) + os.sep for part in KIT_PARTS)
        self.classes: dict[str, dict] = {}  # "solution/lora.py: LoRALinear" -> {method: (fingerprint, source)}
        for path in sorted((self.root / "solution").rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            try:
                codes, sources = file_index(path)
            except (OSError, SyntaxError, ValueError, UnicodeDecodeError):
                continue  # a file being edited right now: the others still count
            where = path.relative_to(self.root).as_posix()
            for qualname, fp in codes.items():
                owner, _, method = qualname.rpartition(".")
                if owner and "<locals>" not in qualname:
                    self.classes.setdefault(f"{where}: {owner}", {})[method] = (fp, sources.get(qualname, ""))

    def in_kit(self, filename: str) -> bool:
        try:
            real = os.path.realpath(filename)
        except (TypeError, ValueError):
            return False
        return real.startswith(self.dirs)

    def whose(self, described: list[dict]) -> str:
        """"" when the described class is the learner's; else what of the kit's it is."""
        for klass in described:
            for m in klass.get("methods", []):
                if self.in_kit(m.get("file", "")):
                    where = os.path.relpath(os.path.realpath(m["file"]), self.root)
                    return f"{klass['class']}.{m['name']} was compiled from the kit's {where}"
        for klass in described:
            methods = {m.get("name"): m for m in klass.get("methods", []) if isinstance(m, dict)}
            for kit_class, kit_methods in self.classes.items():
                if all(name in methods and name in kit_methods and _same(methods[name], kit_methods[name])
                       for name in COMPARED):
                    return (f"{klass['class']}'s forward and __init__ are the reference solution's ({kit_class}), "
                            "exec'd, pasted or relabelled")
        return ""


def _same(method: dict, kit: tuple) -> bool:
    """Whether a described method has the kit method's code fingerprint or source hash."""
    fp, source = kit
    return method.get("code") == fp or bool(source and method.get("source") == source)


def checks_index(root) -> dict[str, dict]:
    """realpath -> (qualname -> fingerprint) for the kit's checks/*.py, from their source text as it is now."""
    indexes = {}
    for path in sorted((Path(root) / "checks").glob("*.py")):
        try:
            indexes[os.path.realpath(path)] = file_index(path)[0]
        except (OSError, SyntaxError, ValueError, UnicodeDecodeError):
            continue
    return indexes


def registry_problem(rows, root, indexes=None) -> str:
    """"" when every check the worker reported is a function of the kit's checks/ with the fingerprint that its
    file's source text gives (`indexes`, from checks_index, taken as the worker started); else what differs."""
    if not rows:
        return "the worker reported no checks"
    checks_dir = str(Path(root).resolve() / "checks") + os.sep
    indexes = dict(indexes or {})
    for number, name, qualname, filename, fp in rows:
        real = os.path.realpath(filename) if filename else ""
        if not real.startswith(checks_dir):
            return f"check {number} ({name}) is {qualname}, which is not a function of the kit's checks/"
        if real not in indexes:
            try:
                indexes[real] = file_index(Path(real))[0]
            except (OSError, SyntaxError, ValueError, UnicodeDecodeError) as exc:
                return f"the kit's {os.path.basename(real)} could not be read to verify check {number}: {exc}"
        if indexes[real].get(qualname) != fp:
            return f"check {number} ({name}): the code of {qualname} is not the code in the kit's source"
    return ""
