"""`python -m checks handout OUT.ipynb`: the learner's notebook, with the checks packed inside it.

Colab opens only the notebook, and a published repository would hand every learner the reference solution too.
The handout solves both: it is lora_mock.ipynb with its setup cell replaced by two cells that carry this kit's
`checks` package (every .py file and the lab's data, no `solution`) as a base64 zip and unpack it into a temporary
folder. It runs in any Jupyter or Colab runtime that has torch and matplotlib, offline; nothing is installed.

What changes from lora_mock.ipynb:
  * the setup cell (tag `setup`) becomes a folded payload cell and a short visible loader cell, both tagged
    `setup` (a grader skips them and uses its own installed checks), then a plain cell of torch imports;
  * the instructor's swap cell (`checks.swap_in(...)`), its paragraph, the Colab badge (it opens the repository's
    notebook, not the handout) and cells tagged `instructor-note` are dropped;
  * every output and execution count is stripped, so no result of the reference solution shows under the stub;
  * `--mode interview` reduces the stub's docstring to one line naming what the checks read;
  * `--title` puts a course title at the top; the kit's version (pyproject's version + a hash of the packed files)
    is stamped in the notebook's metadata (`lora_drill`) and printed by the loader cell.

`REPO_SETUP_CELL` and `apply_repo_cells` are the repository notebook's setup cell (a clear way out when the kit
cannot be installed) and its note on the stored outputs, for whoever edits lora_mock.ipynb.
"""
from __future__ import annotations

import argparse
import ast
import base64
import hashlib
import html
import io
import os
import re
import sys
import tempfile
import zipfile
from pathlib import Path

from checks.notebook import output_problem

KIT_DIR = Path(__file__).resolve().parent
KIT_ROOT = KIT_DIR.parent
NOTEBOOK = KIT_ROOT / "lora_mock.ipynb"
PYPROJECT = KIT_ROOT / "pyproject.toml"

SIZE_AIM = 500_000  # bytes: a handout should stay well under this to mail, upload or attach
MODES = ("normal", "interview")
SETUP_TAG, STUB_TAG, NOTE_TAG = "setup", "lora-stub", "instructor-note"
PAYLOAD_NAME = "LORA_DRILL_KIT"  # the payload cell's one variable
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # a fixed timestamp, so the same files always pack to the same bytes
PASSED, FAILED, UNUSABLE = 0, 1, 2


class HandoutError(Exception):
    """The handout cannot be built as asked; the message says why and what to do (exit code 2)."""


# ---------------------------------------------------------------------------------------------- the packed kit


def kit_files(kit_dir: Path = KIT_DIR) -> dict[str, bytes]:
    """What the handout carries: checks/**/*.py and checks/data/*.pt, keyed by their path in the zip, sorted."""
    found = [p for p in kit_dir.rglob("*.py") if "__pycache__" not in p.relative_to(kit_dir).parts]
    found += sorted((kit_dir / "data").glob("*.pt"))
    return {f"checks/{p.relative_to(kit_dir).as_posix()}": p.read_bytes() for p in sorted(set(found))}


def content_hash(files: dict[str, bytes]) -> str:
    """sha256 over every (name, sha256 of its bytes), in name order; the loader cell computes the same."""
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(f"{name}\0{hashlib.sha256(files[name]).hexdigest()}\n".encode())
    return digest.hexdigest()


def project_version(pyproject: Path = PYPROJECT) -> str:
    """The `version` of pyproject.toml's [project] table (read as text: tomllib is not in Python 3.10)."""
    try:
        text = pyproject.read_text(encoding="utf-8")
    except OSError:
        text = ""
    project = re.search(r"^\[project\]\s*$(.*?)(?=^\[|\Z)", text, re.MULTILINE | re.DOTALL)
    found = re.search(r'^version\s*=\s*"([^"]+)"', project.group(1), re.MULTILINE) if project else None
    if found:
        return found.group(1)
    try:
        from importlib.metadata import version
        return version("lora-drill")
    except Exception:  # no pyproject beside the kit and no installed distribution: say so in the version
        return "0+unknown"


def kit_version(files: dict[str, bytes]) -> str:
    """`0.1.0+3f2a9c1e44b0`: pyproject's version, then the first 12 hex digits of the packed files' hash."""
    return f"{project_version().split('+')[0]}+{content_hash(files)[:12]}"


def pack(files: dict[str, bytes]) -> bytes:
    """A zip of `files`, the same bytes for the same files: fixed timestamps, name order, one compression level."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        for name in sorted(files):
            info = zipfile.ZipInfo(name, _ZIP_TIME)
            info.external_attr = 0o644 << 16
            z.writestr(info, files[name], compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------- the setup cells

PAYLOAD_TITLE = "lora-drill kit {version}, packed: run this cell, then the next one unpacks it"

LOADER_CELL = '''\
# Setup: unpacks lora-drill kit {version} (the checks and the lab's model, carried in the folded cell
# above; no solution) into a temporary folder, puts that folder first on sys.path and imports `checks` from it.
# Nothing is installed or downloaded.
import base64, hashlib, io, sys, tempfile, zipfile

KIT_VERSION = "{version}"
try:
    _kit = zipfile.ZipFile(io.BytesIO(base64.b64decode({payload})))
except NameError:
    raise RuntimeError("Run the folded cell above this one first (or Run all): it holds the kit.") from None
_kit_dir = tempfile.mkdtemp(prefix="lora-drill-kit-")
_kit.extractall(_kit_dir)
_digest = hashlib.sha256()
for _name in sorted(_kit.namelist()):
    _digest.update(f"{{_name}}\\0{{hashlib.sha256(_kit.read(_name)).hexdigest()}}\\n".encode())
for _name in [m for m in sys.modules if m == "checks" or m.startswith("checks.")]:
    del sys.modules[_name]  # a kit imported earlier (this cell run before, or an installed one) steps aside
sys.path.insert(0, _kit_dir)
import checks
print(f"lora-drill kit {{KIT_VERSION}}: unpacked to {{_kit_dir}} and imported from there.")
if not KIT_VERSION.endswith("+" + _digest.hexdigest()[:12]):
    print("Warning: the packed kit is not the one this handout was built with; it was edited since.")
'''

IMPORTS_CELL = "import torch\nfrom torch import nn\nimport torch.nn.functional as F"


def _new_code_cell(source: str, cell_id: str, tags=(), **metadata):
    import nbformat

    cell = nbformat.v4.new_code_cell(source)
    cell.id = cell_id  # fixed, so that the same kit and notebook always give the same handout
    cell.metadata.update(metadata)
    if tags:
        cell.metadata["tags"] = list(tags)
    return cell


def setup_cells(packed: bytes, version: str) -> list:
    """The handout's first code cells: the folded payload, the visible loader, the torch imports."""
    payload = base64.b64encode(packed).decode("ascii")
    title = PAYLOAD_TITLE.format(version=version)
    folded = _new_code_cell(f'#@title {title} {{ display-mode: "form" }}\n{PAYLOAD_NAME} = "{payload}"',
                            "lora-drill-kit", tags=[SETUP_TAG], cellView="form", jupyter={"source_hidden": True})
    loader = _new_code_cell(LOADER_CELL.format(version=version, payload=PAYLOAD_NAME).rstrip("\n"),
                            "lora-drill-setup", tags=[SETUP_TAG])
    return [folded, loader, _new_code_cell(IMPORTS_CELL, "lora-drill-imports")]


# ---------------------------------------------------------------------------------------------- the notebook


def _tags(cell) -> list:
    return cell.metadata.get("tags", [])


def _one_tagged(nb, tag: str, shown: str):
    cells = [i for i, c in enumerate(nb.cells) if tag in _tags(c)]
    if len(cells) != 1:
        raise HandoutError(f"{shown} should have exactly one cell tagged `{tag}`; it has {len(cells)}. "
                           "The handout is built from the kit's own notebook: restore the tag there")
    return cells[0]


def _markdown_title(title: str) -> str:
    """The course title as one bold markdown line: HTML escaped, markdown's emphasis and link marks backslashed."""
    text = html.escape(" ".join(title.split()), quote=False)
    return "**" + re.sub(r"([\\`*_\[\]#|])", r"\\\1", text) + "**"


HANDOUT_NOTE = ("*This is a handout: the checks travel inside it (the two setup cells below), so it runs in Colab "
                "(File → Upload notebook) or any Jupyter with torch and matplotlib, with nothing to install.*")


def _first_markdown(nb, title: str | None) -> None:
    cell = next((c for c in nb.cells if c.cell_type == "markdown"), None)
    if cell is None:
        return
    lines = [line for line in cell.source.splitlines() if "colab.research.google.com" not in line]
    text = "\n".join(lines).strip("\n")
    text = re.sub(r"\n{3,}", "\n\n", text)
    head = [_markdown_title(title), ""] if title else []
    cell.source = "\n".join(head + [text, "", HANDOUT_NOTE])


def _drop_swap_paragraphs(nb) -> None:
    """Markdown paragraphs about the instructor's swap go with the swap cell."""
    for cell in nb.cells:
        if cell.cell_type == "markdown" and "LORA_DRILL_SOLUTION" in cell.source:
            paragraphs = re.split(r"\n\s*\n", cell.source)
            cell.source = "\n\n".join(p for p in paragraphs if "LORA_DRILL_SOLUTION" not in p)


def contract_names(docstring: str) -> list[str]:
    """The attribute names under "attributes:" in the stub's docstring: what the checks read."""
    lines = docstring.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == "attributes:"), None)
    if start is None:
        return []
    indent = len(lines[start]) - len(lines[start].lstrip())
    names = []
    for line in lines[start + 1:]:
        if not line.strip():
            continue
        if len(line) - len(line.lstrip()) <= indent:
            break
        leading = re.match(r"\s*([A-Za-z_]\w*(?:\s*,\s*[A-Za-z_]\w*)*)", line)
        names += [n.strip() for n in leading.group(1).split(",")] if leading else []
    return names


INTERVIEW_NOTE = ("**Interview mode.** The stub names only what the checks read. Say the contract out loud before "
                  "you write it: the shapes of A and B, what is frozen, what the scaling is. A failing check says "
                  "what it expected.")


def interview_stub(source: str) -> str:
    """The stub with its docstring reduced to one line (its first, plus the names the checks read) and its
    "# Your code: …" comments reduced to "# Your code"; the class and method signatures stay as they are."""
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        raise HandoutError(f"the stub cell does not parse ({exc.msg}, line {exc.lineno}); fix lora_mock.ipynb") from None
    cls = next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "LoRALinear"), None)
    doc = ast.get_docstring(cls) if cls else None
    if doc is None:
        raise HandoutError("the stub cell has no `class LoRALinear` with a docstring to fold; fix lora_mock.ipynb")
    node = cls.body[0]
    lines = source.splitlines()
    indent = lines[node.lineno - 1][:len(lines[node.lineno - 1]) - len(lines[node.lineno - 1].lstrip())]
    names = contract_names(doc)
    summary = doc.splitlines()[0].strip()
    one_line = summary + (f" The checks read: {', '.join(names)}." if names else "")
    kept = lines[:node.lineno - 1] + [f'{indent}"""{one_line}"""'] + lines[node.end_lineno:]
    return "\n".join(re.sub(r"^(\s*# Your code):.*$", r"\1", line) for line in kept)


def _interview(nb, stub_index: int) -> None:
    stub = nb.cells[stub_index]
    stub.source = interview_stub(stub.source)
    before = next((c for c in reversed(nb.cells[:stub_index]) if c.cell_type == "markdown"), None)
    if before is not None:
        text = re.sub(r" ?[^.\n]*docstring is the contract[^.\n]*\.", "", before.source)
        before.source = text.rstrip("\n") + "\n\n" + INTERVIEW_NOTE


def build(source_nb, mode: str = "normal", title: str | None = None, files: dict[str, bytes] | None = None,
          shown: str = "lora_mock.ipynb"):
    """The handout notebook (a new object; `source_nb` is left as it was)."""
    import copy

    import nbformat

    if mode not in MODES:
        raise HandoutError(f"--mode must be one of {', '.join(MODES)}; got {mode!r}")
    files = kit_files() if files is None else files
    if any(not name.startswith("checks/") for name in files):
        raise HandoutError("the packed files must all lie under checks/; the solution never travels")
    version, digest = kit_version(files), content_hash(files)
    nb = copy.deepcopy(source_nb)
    setup = _one_tagged(nb, SETUP_TAG, shown)
    _one_tagged(nb, STUB_TAG, shown)
    nb.cells[setup:setup + 1] = setup_cells(pack(files), version)
    nb.cells = [c for c in nb.cells
                if NOTE_TAG not in _tags(c) and not (c.cell_type == "code" and "checks.swap_in(" in c.source)]
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
            cell.metadata.pop("execution", None)
    _drop_swap_paragraphs(nb)
    _first_markdown(nb, title)
    if mode == "interview":
        _interview(nb, _one_tagged(nb, STUB_TAG, shown))
    nb.metadata["lora_drill"] = {"handout": True, "kit_version": version, "content_sha256": digest, "mode": mode,
                                 "title": title or "", "packed_files": sorted(files)}
    nb.metadata.pop("widgets", None)
    nbformat.validate(nb)
    return nb


def kit_stamp(nb) -> dict:
    """The `lora_drill` stamp of a handout (kit_version, content_sha256, mode, …); {} for a notebook without one."""
    stamp = nb.get("metadata", {}).get("lora_drill", {})
    return dict(stamp) if isinstance(stamp, dict) else {}


# ---------------------------------------------------------------------------------------------- the repository's notebook

REPO_SETUP_CELL = '''\
# Setup. Colab opens only this notebook, so the kit (the checks and the reference solution) is found or installed here.
KIT_SOURCE = "git+https://github.com/lora-drill/lora-drill"  # <- where the kit installs from (LORA_DRILL_SOURCE overrides)

import importlib, os, subprocess, sys
import torch
from torch import nn
import torch.nn.functional as F

try:
    import checks
except ImportError:
    source = os.environ.get("LORA_DRILL_SOURCE", KIT_SOURCE)
    print(f"Installing the lora-drill kit from {source} ...")
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", source], capture_output=True, text=True)
    importlib.invalidate_caches()
    try:
        import checks
    except ImportError:
        said = ((pip.stderr or pip.stdout).strip().splitlines() or ["nothing"])[-1]
        message = (f"The lora-drill kit could not be installed from {source}\\n  (pip said: {said})\\n"
                   "Three ways out:\\n"
                   "  1. Set KIT_SOURCE at the top of this cell to a source you can reach (a git URL, a wheel or a\\n"
                   "     folder; LORA_DRILL_SOURCE in the environment overrides it) and run this cell again.\\n"
                   "  2. Open the handout instead: ask your instructor for the notebook `python -m checks handout`\\n"
                   "     writes; it carries the checks inside it (in Colab: File > Upload notebook).\\n"
                   "  3. Run from a clone: git clone the kit, `pip install -e .` in it, then open lora_mock.ipynb there.")

        class KitMissing:  # later cells that use `checks` repeat the message above, not a NameError
            def __getattr__(self, name):
                raise RuntimeError(message)
        checks = KitMissing()
        raise RuntimeError(message) from None
'''

REPO_OUTPUTS_NOTE = (
    "> **Instructor's copy.** The outputs stored under this notebook's cells are the **reference solution's**: it "
    "is CI's baseline, which nbval compares on every change. Learners get the handout instead "
    "(`python -m checks handout OUT.ipynb`): the same drill, the checks inside it, no solution and no outputs. "
    "Working from this copy? Clear all outputs first (Edit → Clear Outputs of All Cells).")


def apply_repo_cells(nb):
    """Give the repository's notebook REPO_SETUP_CELL, and the note on its stored outputs as a markdown cell tagged
    `instructor-note` after the first markdown cell (replaced if there already). Changes `nb` and returns it."""
    import nbformat

    nb.cells[_one_tagged(nb, SETUP_TAG, "the notebook")].source = REPO_SETUP_CELL.rstrip("\n")
    notes = [c for c in nb.cells if NOTE_TAG in _tags(c)]
    if notes:
        notes[0].source = REPO_OUTPUTS_NOTE
        return nb
    first = next((i for i, c in enumerate(nb.cells) if c.cell_type == "markdown"), -1)
    note = nbformat.v4.new_markdown_cell(REPO_OUTPUTS_NOTE)
    note.id = "instructor-note"
    note.metadata["tags"] = [NOTE_TAG]
    nb.cells.insert(first + 1, note)
    return nb


# ---------------------------------------------------------------------------------------------- the command


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m checks handout",
        description="Write a learner's handout to OUT.ipynb: lora_mock.ipynb with the checks packed inside it, "
                    "so it runs in Colab or any Jupyter with torch and matplotlib, offline, with nothing installed. "
                    "No reference solution and no stored outputs. Exit code 0: written; 2: bad usage.")
    p.add_argument("out", metavar="OUT.ipynb", help="where to write the handout (a new file)")
    p.add_argument("--mode", choices=MODES, default="normal",
                   help="normal: the stub with its full contract; interview: the stub's docstring folded to one "
                        "line naming what the checks read (default: normal)")
    p.add_argument("--title", metavar="TEXT", help="a course title, shown at the top of the first cell")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists (never lora_mock.ipynb)")
    return p


def _target_problem(out: Path, force: bool) -> str:
    problem = output_problem(out, NOTEBOOK, "lora_handout.ipynb")
    if not problem and out.exists() and not force:
        problem = (f"{out} already exists (it could be a learner's work); name a new file, or pass --force to "
                   "replace it")
    return problem


def _write(nb, out: Path) -> int:
    """Write `nb` to `out` through a temporary file in the same folder, so `out` is never left half written."""
    import nbformat

    fd, temporary = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    mask = os.umask(0)
    os.umask(mask)
    try:
        os.chmod(temporary, 0o666 & ~mask)  # mkstemp's file is private; a handout is for sharing
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            nbformat.write(nb, f)
        os.replace(temporary, out)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return out.stat().st_size


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # argparse has printed the usage error, or the help
        return UNUSABLE if exc.code else PASSED
    out = Path(args.out)
    problem = _target_problem(out, args.force)
    if args.title is not None and not args.title.strip():
        problem = "--title is empty; give the course title as text, e.g. --title \"ML interviews, spring cohort\""
    if problem:
        print(f"python -m checks handout: {problem}", file=sys.stderr)
        return UNUSABLE
    import nbformat

    try:
        source = nbformat.read(NOTEBOOK, as_version=4)
        nb = build(source, args.mode, args.title and " ".join(args.title.split()))
        size = _write(nb, out)
    except HandoutError as exc:
        print(f"python -m checks handout: {exc}", file=sys.stderr)
        return UNUSABLE
    except OSError as exc:
        print(f"python -m checks handout: could not write {out}: {exc.strerror or exc}; "
              "check the folder's permissions and free space", file=sys.stderr)
        return UNUSABLE
    except Exception as exc:  # nbformat's reading or validation errors: the kit's notebook is damaged
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        print(f"python -m checks handout: {NOTEBOOK.name} could not be turned into a handout: {first}; "
              "restore it from git (git checkout lora_mock.ipynb)", file=sys.stderr)
        return UNUSABLE
    stamp = kit_stamp(nb)
    aim = "under" if size < SIZE_AIM else "OVER"
    print(f"wrote {out}: {size / 1000:.1f} KB ({aim} the {SIZE_AIM // 1000} KB aim), {args.mode} mode, "
          f"kit {stamp['kit_version']} ({len(stamp['packed_files'])} files packed), no solution, no outputs")
    return PASSED


if __name__ == "__main__":
    sys.exit(main())
