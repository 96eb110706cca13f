"""`python -m checks handout`: a learner's notebook that carries the checks, runs offline without the kit installed,
holds no solution and no outputs, and grades with the grader's own checks; and the repository notebook's setup cell.

Notebook runs cost about 10 s of CPU each, so each is made once (module-scoped fixtures) and asserted on by
several tests."""
from __future__ import annotations

import base64
import io
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import nbformat
import pytest

from checks import handout
from tests.conftest import ROOT
from tests.test_cli import B_RANDOM, CORRECT
from tests.test_drift import _normalised, solution_body_lines
from tests.test_notebook import _environment_without_the_kit

DRILL = ROOT / "lora_mock.ipynb"
NOWHERE = "http://127.0.0.1:9/simple"  # the discard port: pip cannot reach an index there

# A packed kit edited to pass everything: every check function replaced by one that says "ok".
PASS_EVERYTHING = """
for _number, (_name, _fn) in list(CHECKS.items()):
    CHECKS[_number] = (_name, lambda *args, **kwargs: "ok")
"""


# ---------------------------------------------------------------------------------------------- helpers


def run_cli(*args, cwd=ROOT, timeout=300) -> subprocess.CompletedProcess:
    """`python -m checks ARGS` as an instructor runs it, with the kit of this checkout."""
    env = {k: v for k, v in os.environ.items() if k != "LORA_DRILL_SOLUTION"}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-m", "checks", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def tagged(nb, tag):
    return [c for c in nb.cells if tag in c.metadata.get("tags", [])]


def stub(nb):
    (cell,) = tagged(nb, "lora-stub")
    return cell


def payload_cell(nb):
    return next(c for c in nb.cells if f"{handout.PAYLOAD_NAME} = " in c.source)


def loader_cell(nb):
    return next(c for c in nb.cells if "KIT_VERSION = " in c.source)


def packed_files(nb) -> dict[str, bytes]:
    encoded = re.search(rf'^{handout.PAYLOAD_NAME} = "([^"]*)"', payload_cell(nb).source, re.MULTILINE).group(1)
    with zipfile.ZipFile(io.BytesIO(base64.b64decode(encoded))) as z:
        return {name: z.read(name) for name in z.namelist()}


def repack(nb, edit, restamp=True):
    """`nb` with its packed kit edited by `edit(files)`; restamped (as a careful cheat would) unless told not to."""
    files = packed_files(nb)
    edit(files)
    payload = base64.b64encode(handout.pack(files)).decode("ascii")
    cell = payload_cell(nb)
    cell.source = re.sub(rf'^{handout.PAYLOAD_NAME} = "[^"]*"', f'{handout.PAYLOAD_NAME} = "{payload}"',
                         cell.source, flags=re.MULTILINE)
    if restamp:
        version = handout.kit_version(files)
        loader_cell(nb).source = re.sub(r'KIT_VERSION = "[^"]*"', f'KIT_VERSION = "{version}"', loader_cell(nb).source)
        nb.metadata["lora_drill"].update(kit_version=version, content_sha256=handout.content_hash(files))
    return nb


def passes_everything(files):
    files["checks/sanity.py"] = files["checks/sanity.py"] + PASS_EVERYTHING.encode()


def filled(nb, source: str):
    stub(nb).source = source
    return nb


def setup_cells_as_script(nb) -> str:
    """The handout's payload and loader cells as one plain Python script (they use no IPython syntax)."""
    return "\n".join(c.source for c in tagged(nb, "setup"))


RUN_NOTEBOOK = """
import json, sys, nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
nb = nbformat.read(sys.argv[1], as_version=4)
error = None
try:
    NotebookClient(nb, timeout=600, kernel_name="python3", allow_errors=sys.argv[2:] == ["allow-errors"]).execute()
except CellExecutionError as exc:
    error = {"ename": exc.ename, "evalue": exc.evalue}
def text(o):
    return o.get("text", "") or o.get("data", {}).get("text/plain", "") or f"{o.get('ename', '')}: {o.get('evalue', '')}"
cells = [{"source": c.source, "outputs": "".join(text(o) for o in c.get("outputs", [])),
          "failed": any(o.output_type == "error" for o in c.get("outputs", []))} for c in nb.cells]
print(json.dumps({"error": error, "cells": cells}))
"""


def run_in(python: Path, notebook: Path, allow_errors=False, **env) -> dict:
    """Execute `notebook` with nbclient under `python`, from the notebook's folder, with pip cut off from any index.
    Stops at the first error (reported under "error") unless `allow_errors`, when every cell runs."""
    base = {k: v for k, v in os.environ.items() if k not in ("LORA_DRILL_SOLUTION", "VIRTUAL_ENV")}
    base.update(PYTHONPATH="", PIP_NO_INDEX="1", PIP_INDEX_URL=NOWHERE, PIP_EXTRA_INDEX_URL="",
                JUPYTER_PATH=str(notebook.parent.parent / "no-kernelspecs"), **env)
    command = [python, "-c", RUN_NOTEBOOK, notebook.name] + (["allow-errors"] if allow_errors else [])
    done = subprocess.run(command, cwd=notebook.parent, env=base, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def output_of(run: dict, source: str) -> str:
    return next(c["outputs"] for c in run["cells"] if c["source"].strip() == source)


# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def building(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """A handout written by the public command, in normal mode, and what the command said."""
    out = tmp_path_factory.mktemp("built") / "lora_handout.ipynb"
    done = run_cli("handout", out, "--title", "ML interviews, spring cohort")
    assert done.returncode == 0, done.stdout + done.stderr
    return out, done


@pytest.fixture(scope="module")
def built(building) -> Path:
    return building[0]


@pytest.fixture(scope="module")
def kitless_python(tmp_path_factory) -> Path:
    """A fresh virtual environment with torch, matplotlib, tqdm, nbformat, nbclient and ipykernel, but not the kit."""
    where = tmp_path_factory.mktemp("kitless")
    python = _environment_without_the_kit(where)
    for module in ("checks", "solution"):
        seen = subprocess.run([python, "-c", f"import {module}"], cwd=where, capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": ""})
        assert seen.returncode != 0, f"the fresh environment must not see {module!r}"
    return python


@pytest.fixture(scope="module")
def offline_runs(built, kitless_python, tmp_path_factory) -> dict[str, dict]:
    """The handout filled with a correct layer and with a broken one, each run from an empty folder, offline."""
    runs = {}
    for name, layer in (("correct", CORRECT), ("broken", B_RANDOM)):
        nb = filled(nbformat.read(built, as_version=4), layer)
        if name == "correct":
            nb.cells.append(nbformat.v4.new_code_cell(
                "try:\n    import solution\nexcept ModuleNotFoundError as exc:\n    print('ModuleNotFoundError:', exc)"))
            nb.cells.append(nbformat.v4.new_code_cell("print(checks.__file__)"))
        empty = tmp_path_factory.mktemp(f"offline-{name}")
        nbformat.write(nb, empty / "handout.ipynb")
        runs[name] = run_in(kitless_python, empty / "handout.ipynb")
        runs[name]["folder"] = sorted(p.name for p in empty.iterdir())
    return runs


@pytest.fixture(scope="module")
def submissions(built, tmp_path_factory) -> Path:
    """Two filled handouts: a correct layer; a broken layer whose packed kit was edited to pass everything."""
    folder = tmp_path_factory.mktemp("submissions")
    nbformat.write(filled(nbformat.read(built, as_version=4), CORRECT), folder / "correct.ipynb")
    cheat = repack(filled(nbformat.read(built, as_version=4), B_RANDOM), passes_everything)
    nbformat.write(cheat, folder / "cheat.ipynb")
    return folder


@pytest.fixture(scope="module")
def graded(submissions) -> dict[str, dict]:
    done = run_cli("grade", submissions / "correct.ipynb", submissions / "cheat.ipynb", "--json", timeout=900)
    if done.returncode not in (0, 1):
        raise RuntimeError(f"grade exited {done.returncode}:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return {Path(item["path"]).name: item for item in json.loads(done.stdout)}


# ---------------------------------------------------------------------------------------------- the command


def test_the_command_writes_a_handout_and_prints_its_size(building):
    built, done = building
    size = built.stat().st_size
    assert f"{size / 1000:.1f} KB" in done.stdout and "under the 500 KB aim" in done.stdout
    assert size < handout.SIZE_AIM
    nbformat.validate(nbformat.read(built, as_version=4))


def test_no_outputs_no_execution_counts_no_swap_cell(built):
    nb = nbformat.read(built, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert any(c.outputs for c in nbformat.read(DRILL, as_version=4).cells if c.cell_type == "code"), \
        "lora_mock.ipynb has no stored outputs: this test would pass vacuously"
    assert all(c.outputs == [] and c.execution_count is None for c in code)
    assert not any("swap_in" in c.source or "LORA_DRILL_SOLUTION" in c.source for c in nb.cells)
    assert not any("colab.research.google.com" in c.source for c in nb.cells)  # the badge opens the repo's notebook


def test_the_solution_is_nowhere_in_the_handout(built):
    nb = nbformat.read(built, as_version=4)
    files = packed_files(nb)
    assert files and all(name.startswith("checks/") for name in files)
    texts = [c.source for c in nb.cells] + [data.decode("utf-8", "replace") for data in files.values()]
    forbidden = solution_body_lines()
    assert forbidden, "no solution lines to look for: the guard would pass vacuously"
    assert [line for text in texts for line in map(_normalised, text.splitlines()) if line in forbidden] == []


def test_the_leak_guard_sees_the_solution_packed_into_the_kit(built):
    nb = nbformat.read(built, as_version=4)
    leaked = repack(nb, lambda f: f.update({"checks/extra.py": (ROOT / "solution" / "lora.py").read_bytes()}))
    texts = [data.decode("utf-8", "replace") for data in packed_files(leaked).values()]
    assert any(_normalised(line) in solution_body_lines() for text in texts for line in text.splitlines())


def test_the_kit_is_packed_whole_and_stamped(built):
    nb = nbformat.read(built, as_version=4)
    files = packed_files(nb)
    assert files == handout.kit_files()  # every .py of checks/ and the lab's data, byte for byte
    assert "checks/data/tiny_attention.pt" in files and "checks/sanity.py" in files
    stamp = nb.metadata["lora_drill"]
    assert stamp["content_sha256"] == handout.content_hash(files)
    assert stamp["kit_version"] == f"{handout.project_version()}+{stamp['content_sha256'][:12]}"
    assert re.search(r'^version = "0\.1\.0"', (ROOT / "pyproject.toml").read_text(), re.MULTILINE)
    assert handout.project_version() == "0.1.0"
    assert f'KIT_VERSION = "{stamp["kit_version"]}"' in loader_cell(nb).source
    assert stamp["kit_version"] in payload_cell(nb).source.splitlines()[0]
    assert stamp["mode"] == "normal" and stamp["title"] == "ML interviews, spring cohort"


def test_the_setup_cells_are_tagged_folded_and_short(built):
    nb = nbformat.read(built, as_version=4)
    setup = tagged(nb, "setup")
    assert setup == [payload_cell(nb), loader_cell(nb)]
    folded = payload_cell(nb)
    assert folded.metadata["jupyter"]["source_hidden"] is True and folded.metadata["cellView"] == "form"
    assert folded.source.startswith("#@title ")
    loader = loader_cell(nb).source
    assert len(loader.splitlines()) < 30 and "temporary folder" in loader and "sys.path" in loader
    imports = nb.cells[nb.cells.index(setup[-1]) + 1]
    assert "setup" not in imports.metadata.get("tags", []) and "from torch import nn" in imports.source


def test_the_course_title_opens_the_first_cell(built):
    first = next(c for c in nbformat.read(built, as_version=4).cells if c.cell_type == "markdown")
    assert first.source.startswith("**ML interviews, spring cohort**\n")


def test_interview_mode_folds_the_contract_to_one_line(tmp_path):
    normal, interview = tmp_path / "normal.ipynb", tmp_path / "interview.ipynb"
    assert run_cli("handout", normal).returncode == 0
    done = run_cli("handout", interview, "--mode", "interview", "--title", "Mock <interview> *round 2*")
    assert done.returncode == 0, done.stderr
    assert "interview mode" in done.stdout
    nb_normal, nb_interview = (nbformat.read(p, as_version=4) for p in (normal, interview))
    before, after = stub(nb_normal).source, stub(nb_interview).source
    assert "Contract (what the checks rely on)" in before and "Contract" not in after
    docstring = re.search(r'"""(.*?)"""', after, re.DOTALL).group(1)
    assert "\n" not in docstring
    for name in ("in_features", "out_features", "r", "scaling", "base", "A", "B"):
        assert re.search(rf"\b{name}\b", docstring), name
    signatures = lambda text: [line.strip() for line in text.splitlines() if line.strip().startswith(("class ", "def "))]
    assert signatures(after) == signatures(before) and len(signatures(after)) == 4
    assert nb_interview.metadata["lora_drill"]["mode"] == "interview"
    first = next(c for c in nb_interview.cells if c.cell_type == "markdown").source
    assert first.startswith(r"**Mock &lt;interview&gt; \*round 2\***")


@pytest.mark.parametrize("args, words", [
    (["notebook.txt"], "does not end in .ipynb"),
    (["no/such/folder/h.ipynb"], "does not exist"),
    (["h.ipynb", "--mode", "exam"], "invalid choice"),
    (["h.ipynb", "--title", "  "], "--title is empty"),
    ([], "required"),
])
def test_usage_errors_exit_2_with_a_message(args, words, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert handout.main(args) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_an_existing_file_is_never_replaced_without_force(tmp_path, capsys):
    learners_work = tmp_path / "mine.ipynb"
    learners_work.write_text("a learner's notebook", encoding="utf-8")
    assert handout.main([str(learners_work)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert learners_work.read_text(encoding="utf-8") == "a learner's notebook"
    assert handout.main([str(learners_work), "--force"]) == 0
    assert handout.kit_stamp(nbformat.read(learners_work, as_version=4))["handout"] is True


def test_the_drill_itself_is_never_overwritten_even_with_force(capsys):
    before = DRILL.read_bytes()
    assert handout.main([str(DRILL), "--force"]) == 2
    assert "never overwrites" in capsys.readouterr().err
    assert DRILL.read_bytes() == before


def test_building_twice_gives_the_same_handout():
    source = nbformat.read(DRILL, as_version=4)
    first, second = handout.build(source), handout.build(source)
    assert nbformat.writes(first) == nbformat.writes(second)
    assert nbformat.writes(source) == nbformat.writes(nbformat.read(DRILL, as_version=4))  # the source untouched


# ---------------------------------------------------------------------------------------------- the loader, without Jupyter


def test_the_loader_unpacks_the_kit_into_a_temporary_folder(built, tmp_path):
    """The setup cells as plain Python, with no site-packages at all (-I -S): nothing of the kit can come from
    an installation, and `solution` cannot be imported."""
    nb = nbformat.read(built, as_version=4)
    script = setup_cells_as_script(nb) + (
        "\nprint('FROM', checks.__file__)\n"
        "try:\n    import solution\nexcept ModuleNotFoundError as exc:\n    print('ModuleNotFoundError:', exc)\n")
    done = subprocess.run([sys.executable, "-I", "-S", "-"], input=script, cwd=tmp_path, capture_output=True,
                          text=True)  # on stdin: the packed kit is longer than one argument may be
    assert done.returncode == 0, done.stderr
    version = nb.metadata["lora_drill"]["kit_version"]
    assert f"lora-drill kit {version}: unpacked to " in done.stdout
    where = re.search(r"FROM (.*)", done.stdout).group(1)
    assert "lora-drill-kit-" in where and not where.startswith(str(ROOT))
    assert "ModuleNotFoundError: No module named 'solution'" in done.stdout
    assert "Warning" not in done.stdout
    assert list(tmp_path.iterdir()) == []


def test_the_loader_says_when_the_packed_kit_was_edited(built, tmp_path):
    edited = repack(nbformat.read(built, as_version=4), passes_everything, restamp=False)
    done = subprocess.run([sys.executable, "-I", "-S", "-"], input=setup_cells_as_script(edited), cwd=tmp_path,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "it was edited since" in done.stdout


def test_the_edit_really_makes_the_packed_checks_pass_a_broken_layer(built, tmp_path):
    """Guards the cheat below: with the edited kit, check 2 passes B starting random (the real one fails it)."""
    edited = repack(nbformat.read(built, as_version=4), passes_everything)
    script = setup_cells_as_script(edited) + "\n" + handout.IMPORTS_CELL + "\n" + B_RANDOM + \
        "\nchecks.check_2(LoRALinear)\nprint('CHEAT WORKS')\n"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-"], input=script, cwd=tmp_path, capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 0 and "CHEAT WORKS" in done.stdout, done.stdout + done.stderr[-2000:]


# ---------------------------------------------------------------------------------------------- offline, without the kit


def test_a_correct_layer_runs_clean_offline_without_the_kit(offline_runs):
    run = offline_runs["correct"]
    assert run["error"] is None, run["error"]
    assert "11 of 11 checks passed." in output_of(run, "checks.run_all(LoRALinear)")
    assert "lora-drill kit 0.1.0+" in next(c["outputs"] for c in run["cells"] if "KIT_VERSION = " in c["source"])
    assert "lora-drill-kit-" in output_of(run, "print(checks.__file__)")
    assert run["folder"] == ["handout.ipynb"]  # nothing written beside the notebook


def test_import_solution_fails_in_the_handout(offline_runs):
    run = offline_runs["correct"]
    assert "ModuleNotFoundError: No module named 'solution'" in run["cells"][-2]["outputs"]


def test_a_broken_layer_stops_at_the_check_that_catches_it(offline_runs):
    run = offline_runs["broken"]
    assert run["error"] and run["error"]["ename"] == "CheckFailed"
    stopped = next(c for c in run["cells"] if c["failed"])
    assert stopped["source"].strip() == "checks.check_2(LoRALinear)"
    assert "B is not zero" in run["error"]["evalue"]


# ---------------------------------------------------------------------------------------------- grading filled handouts


def test_the_command_line_checks_a_filled_handout(submissions):
    done = run_cli(submissions / "correct.ipynb")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "11 of 11 checks passed." in done.stdout


def test_the_command_line_checks_with_its_own_checks_not_the_packed_ones(submissions):
    done = run_cli(submissions / "cheat.ipynb")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "B is not zero" in done.stdout  # check 2's finding, from the installed kit's check 2


def test_grade_passes_a_filled_handout(graded):
    correct = graded["correct.ipynb"]
    assert correct["passed"] is True, correct
    assert [c["passed"] for c in correct["checks"]] == [True] * 11


def test_grade_fails_a_broken_layer_even_when_the_packed_kit_passes_everything(graded):
    """The grader runs the handout's `setup` cells as their imports plus its own `import checks` (checks/notebook.py),
    so the packed copy, edited or not, never judges the submission."""
    cheat = graded["cheat.ipynb"]
    assert cheat["passed"] is False
    assert 2 in {c["id"] for c in cheat.get("checks", []) if not c["passed"]}


# ---------------------------------------------------------------------------------------------- the repository's setup cell


def test_the_repository_cells_apply_to_a_copy_once(tmp_path):
    copy = tmp_path / "lora_mock.ipynb"
    copy.write_bytes(DRILL.read_bytes())
    nb = handout.apply_repo_cells(handout.apply_repo_cells(nbformat.read(copy, as_version=4)))
    nbformat.validate(nb)
    (setup,) = tagged(nb, "setup")
    assert setup.source == handout.REPO_SETUP_CELL.rstrip("\n")
    (note,) = tagged(nb, handout.NOTE_TAG)
    assert nb.cells.index(note) == 1 and "reference solution's" in note.source
    assert [c.outputs for c in nb.cells if c.cell_type == "code"] == \
        [c.outputs for c in nbformat.read(DRILL, as_version=4).cells if c.cell_type == "code"]  # baseline kept
    built = handout.build(nb)
    assert not tagged(built, handout.NOTE_TAG) and "Instructor's copy" not in nbformat.writes(built)


def test_the_repository_setup_cell_names_the_ways_out_when_the_install_fails(kitless_python, tmp_path):
    """The setup cell on a copy, in an environment without the kit, with an install source that does not exist;
    then a later cell that uses `checks`, run anyway, as a learner clicking on would."""
    nb = handout.apply_repo_cells(nbformat.read(DRILL, as_version=4))
    setup = tagged(nb, "setup")[0]
    later = nbformat.v4.new_code_cell("print(nn.Linear.__name__)\nchecks.check_1(None)")
    folder = tmp_path / "upload"
    folder.mkdir()
    nbformat.write(nbformat.v4.new_notebook(metadata=nb.metadata, cells=[setup, later]), folder / "lora_mock.ipynb")
    missing = str(tmp_path / "no-kit-here")
    run = run_in(kitless_python, folder / "lora_mock.ipynb", allow_errors=True, LORA_DRILL_SOURCE=missing)
    first, second = run["cells"]
    assert first["failed"] and f"Installing the lora-drill kit from {missing}" in first["outputs"]
    message = first["outputs"][first["outputs"].index("RuntimeError: "):]
    assert f"could not be installed from {missing}" in message and "pip said: " in message
    for way_out in ("Set KIT_SOURCE", "Open the handout instead", "Run from a clone"):
        assert way_out in message
    assert second["failed"] and "Linear" in second["outputs"]  # torch's names are there; the kit's message again
    assert "RuntimeError: The lora-drill kit could not be installed" in second["outputs"]
    assert "NameError" not in first["outputs"] + second["outputs"]
