"""`python -m checks grade` on a temporary cohort, and `python -m checks demo`: verdicts, reports, inputs untouched."""
import csv
import hashlib
import json
import os
import signal
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import nbformat
import pytest

from checks import cli, report
from checks.collect import collect
from checks.drill import SWAP_VARIABLE
from checks.report import Result
from checks.verdict import Finding, Verdict
from tests.test_cli import CORRECT

ROOT = Path(__file__).resolve().parent.parent
DRILL = ROOT / "lora_mock.ipynb"
SOLUTION = CORRECT  # a learner's correct layer: the reference solution's own code is the kit's, and fails
HANG_LIMIT = 60  # s per file in the cohort run: several times what a correct notebook needs, and what the hang costs

# Each learner's stub cell, built on the solution so that only the named mistake differs.
UNFROZEN_BASE = SOLUTION + """
_init_as_written = LoRALinear.__init__
def _init_leaving_base_trainable(self, *args, **kwargs):
    _init_as_written(self, *args, **kwargs)
    self.base.requires_grad_(True)  # the mistake: W0 trains too
LoRALinear.__init__ = _init_leaving_base_trainable
"""
FORWARD_NEVER_RETURNS = SOLUTION + """
import time
def _forward_never_returns(self, x):
    while True:
        time.sleep(0.05)
LoRALinear.forward = _forward_never_returns
"""
RENAMED = SOLUTION.replace("class LoRALinear", "class LoraLinear")
KILLS_KERNEL = "import os\nos._exit(3)\n"
ASKS_FOR_THE_SOLUTION = f"import os\nos.environ[{SWAP_VARIABLE!r}] = '1'\n\n"  # then the stub as shipped


def stub_cell(nb):
    cells = [c for c in nb.cells if "lora-stub" in c.metadata.get("tags", [])]
    assert len(cells) == 1, f"lora_mock.ipynb should have one cell tagged lora-stub; found {len(cells)}"
    return cells[0]


def shipped_stub() -> str:
    return stub_cell(nbformat.read(DRILL, as_version=4)).source


def learner_notebook(path: Path, stub_source=None) -> Path:
    """lora_mock.ipynb with the stub cell's source replaced (kept as shipped when None), written to `path`."""
    nb = nbformat.read(DRILL, as_version=4)
    if stub_source is not None:
        stub_cell(nb).source = stub_source
    nbformat.write(nb, path)
    return path


def snapshot(folder: Path) -> dict:
    """Every file under `folder` with a digest of its bytes: equal snapshots mean nothing changed or appeared."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def run_cli(*args, env_extra=None, drop=(), timeout=900) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(env_extra or {}, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "checks", *map(str, args)], cwd=ROOT, env=env, text=True,
                          capture_output=True, timeout=timeout)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Grade one cohort, --jobs 2, with the solution switch ON in the grader's environment (it must not leak)."""
    folder = tmp_path_factory.mktemp("cohort")
    out = tmp_path_factory.mktemp("reports")
    files = {
        # The hang goes first, so its time limit runs while the other worker grades the rest.
        "hangs": learner_notebook(folder / "forward_never_returns.ipynb", FORWARD_NEVER_RETURNS),
        "correct": learner_notebook(folder / "correct.ipynb", SOLUTION),
        "broken": learner_notebook(folder / "base_not_frozen.ipynb", UNFROZEN_BASE),
        "stub": learner_notebook(folder / "stub_as_shipped.ipynb"),
        "renamed": learner_notebook(folder / "class_renamed.ipynb", RENAMED),
        "crashes": learner_notebook(folder / "kills_its_kernel.ipynb", KILLS_KERNEL),
        "cheats": learner_notebook(folder / "asks_for_the_solution.ipynb", ASKS_FOR_THE_SOLUTION + shipped_stub()),
        "truncated": folder / "truncated.ipynb",
        "py": folder / "layer.py",
    }
    files["truncated"].write_bytes(DRILL.read_bytes()[:4000])
    files["py"].write_text(SOLUTION, encoding="utf-8")
    before = snapshot(folder)
    done = run_cli("grade", *files.values(), "--jobs", 2, "--timeout", HANG_LIMIT, "--json", "--sandbox", "auto",
                   "--csv", out / "cohort.csv", "--junit", out / "cohort.xml", env_extra={SWAP_VARIABLE: "1"})
    assert done.stdout.lstrip().startswith("["), done.stdout + done.stderr
    by_path = {item["path"]: item for item in json.loads(done.stdout)}
    return {"done": done, "folder": folder, "before": before, "out": out, "files": files,
            "items": {name: by_path[str(path)] for name, path in files.items()}}


def failing_ids(item) -> set:
    return {c["id"] for c in item["checks"] if not c["passed"]}


def test_the_correct_notebook_and_py_pass_every_check(cohort):
    for name in ("correct", "py"):
        item = cohort["items"][name]
        assert item["passed"], item
        assert item["checks"] and not failing_ids(item)
        assert "stopped" not in item


def test_the_broken_layer_fails_by_name_and_its_notebook_stop_is_reported(cohort):
    item = cohort["items"]["broken"]
    assert not item["passed"]
    assert 1 in failing_ids(item)  # check 1: only A and B train


@pytest.mark.parametrize("name, words", [
    ("hangs", f"was still running when the {HANG_LIMIT} s ran out"),
    ("stub", "stub is not filled in"),
    ("renamed", "never defined a class named LoRALinear; it defines LoraLinear"),
    ("crashes", "the check process ended while cell"),
    ("cheats", "stub is not filled in"),  # the swap cell is the kit's: it never runs, so the stub is graded
    ("truncated", "is not a valid notebook"),
])
def test_each_ungradable_notebook_fails_with_its_reason(cohort, name, words):
    item = cohort["items"][name]
    assert not item["passed"]
    assert "checks" not in item, item
    assert words in item["error"], item["error"]
    assert item["hint"]


def test_the_stub_as_shipped_is_graded_on_the_stub_not_on_the_solution(cohort):
    assert "NotImplementedError" in cohort["items"]["stub"]["stopped"]


def test_a_failing_file_makes_the_exit_code_1(cohort):
    assert cohort["done"].returncode == 1, cohort["done"].stderr


def test_no_input_changes_and_nothing_appears_beside_the_inputs(cohort):
    assert snapshot(cohort["folder"]) == cohort["before"]


def test_json_has_one_object_per_file_in_the_order_given(cohort):
    items = json.loads(cohort["done"].stdout)
    assert [i["path"] for i in items] == [str(p) for p in cohort["files"].values()]
    for item in items:
        assert {"path", "passed"} <= item.keys() and ("checks" in item) != ("error" in item)


def test_csv_has_a_row_per_file_with_verdict_and_a_column_per_check(cohort):
    with open(cohort["out"] / "cohort.csv", newline="", encoding="utf-8") as f:
        rows = {row["path"]: row for row in csv.DictReader(f)}
    files = cohort["files"]
    assert set(rows) == {str(p) for p in files.values()}
    assert rows[str(files["correct"])]["verdict"] == "PASS"
    broken = rows[str(files["broken"])]
    assert broken["verdict"] == "FAIL" and "1" in broken["failing_checks"].split() and broken["check_1"] == "fail"
    assert rows[str(files["truncated"])]["reason"].endswith("not a notebook at all)")


def test_junit_has_a_suite_per_file_with_failures_and_errors(cohort):
    suites = {s.get("name"): s for s in ET.parse(cohort["out"] / "cohort.xml").getroot()}
    files = cohort["files"]
    assert set(suites) == {str(p) for p in files.values()}
    assert suites[str(files["correct"])].get("failures") == "0"
    broken = {case.get("name"): case for case in suites[str(files["broken"])]}
    assert next(case for name, case in broken.items() if name.startswith("check 1:")).find("failure") is not None
    stub = {case.get("name"): case for case in suites[str(files["stub"])]}
    assert stub["load"].find("error") is not None
    assert suites[str(files["truncated"])].get("errors") == "1"


def test_all_passing_files_make_the_exit_code_0(tmp_path):
    layer = tmp_path / "layer.py"
    layer.write_text(SOLUTION, encoding="utf-8")
    done = run_cli("grade", tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "PASS" in done.stdout and "1 of 1 files passed." in done.stdout


def test_table_names_file_verdict_failing_checks_and_time():
    failing = Result(7, "forward matches the LoRA formula", False, "scaled by 8", "use alpha / r")
    verdicts = [Verdict("ann.ipynb", [Result(1, "only A and B train", True, "ok"), failing],
                        stopped=Finding("the notebook stopped at cell 30"), seconds=12.3, sandbox="bwrap"),
                Verdict("bo.ipynb", error=Finding("bo.ipynb is not a valid notebook", "save it again"))]
    text = report.cohort_table(verdicts)
    assert text.splitlines()[0].split() == ["file", "verdict", "failing", "checks", "time", "sandbox"]
    assert "ann.ipynb" in text and "FAIL" in text and " 7 " in text and "12 s" in text and "bwrap" in text
    for words in ("stopped at cell 30", "scaled by 8", "use alpha / r", "not a valid notebook", "save it again"):
        assert words in text
    assert "0 of 2 files passed." in text


def test_a_notebook_that_stopped_early_fails_even_when_every_check_passes():
    results = [Result(1, "only A and B train", True, "ok")]
    assert Verdict("ran_through.ipynb", results).passed
    assert not Verdict("stopped.ipynb", results, stopped=Finding("the notebook stopped at cell 40")).passed


def test_folders_are_searched_for_notebooks_and_py_files_skipping_hidden_ones(tmp_path):
    for name in ("b/two.ipynb", "a.py", "notes.txt", ".ipynb_checkpoints/a-checkpoint.ipynb"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("{}")
    assert [p.relative_to(tmp_path).as_posix() for p in collect([tmp_path])] == ["a.py", "b/two.ipynb"]


@pytest.mark.parametrize("args, words", [
    (["grade"], "the following arguments are required"),
    (["grade", "no/such/folder"], "does not exist"),
    (["grade", "README.md"], "neither a notebook"),
    (["grade", "solution/lora.py", "--jobs", "0"], "--jobs at least 1"),
    (["grade", "solution/lora.py", "--csv", "no/such/dir/out.csv"], "does not exist"),
    (["grade", "solution/lora.py", "--junit", "solution/lora.py"], "one of the files to grade"),
    (["grade", "solution/lora.py", "--sandbox", "docker"], "invalid choice"),
    (["demo", "out.txt"], "does not end in .ipynb"),
    (["demo", "lora_mock.ipynb"], "never overwrites"),
])
def test_usage_errors_exit_2_with_a_message(args, words, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert cli.main(args) == 2
    assert words in capsys.readouterr().err


def test_demo_writes_an_executed_copy_with_the_solution_and_leaves_the_drill_alone(tmp_path):
    drill_before = DRILL.read_bytes()
    out = tmp_path / "demo.ipynb"
    done = run_cli("demo", out, drop=(SWAP_VARIABLE,))  # the demo must switch the solution on by itself
    assert done.returncode == 0, done.stdout + done.stderr
    assert DRILL.read_bytes() == drill_before
    nb = nbformat.read(out, as_version=4)
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "using the reference solution" in text and "11 of 11 checks passed." in text
    try:
        import nbconvert  # noqa: F401
    except ImportError:
        assert not out.with_suffix(".html").exists()
    else:
        assert "11 of 11 checks passed." in out.with_suffix(".html").read_text(encoding="utf-8")


def test_the_command_line_and_grade_give_the_same_verdict_on_a_notebook(cohort):
    for name in ("correct", "broken", "stub"):
        done = run_cli(cohort["files"][name], "--json", drop=(SWAP_VARIABLE,))
        alone, graded = json.loads(done.stdout), cohort["items"][name]
        assert alone["passed"] == graded["passed"] and alone.get("error") == graded.get("error")
        assert [(c["id"], c["passed"]) for c in alone.get("checks", [])] == \
            [(c["id"], c["passed"]) for c in graded.get("checks", [])]


def test_ctrl_c_stops_every_worker_and_reports_the_files_already_graded(tmp_path):
    folder = tmp_path / "cohort"
    folder.mkdir()
    learner_notebook(folder / "a_finished.ipynb", SOLUTION)
    learner_notebook(folder / "b_hangs.ipynb", FORWARD_NEVER_RETURNS)
    out = tmp_path / "out"
    out.mkdir()
    env = {k: v for k, v in os.environ.items() if k != SWAP_VARIABLE}
    env["PYTHONPATH"] = str(ROOT)
    grader = subprocess.Popen([sys.executable, "-m", "checks", "grade", str(folder), "--timeout", "600",
                               "--csv", str(out / "g.csv"), "--junit", str(out / "g.xml")], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in grader.stderr:  # progress: one line per file as it finishes
            if "a_finished.ipynb" in line:
                break
        grader.send_signal(signal.SIGINT)
        stdout, stderr = grader.communicate(timeout=15)
    finally:
        if grader.poll() is None:
            grader.kill()
    assert grader.returncode == 130, stderr
    assert "Traceback" not in stdout + stderr
    assert "a_finished.ipynb" in stdout and "INTERRUPTED" in stdout, stdout + stderr
    with open(out / "g.csv", newline="", encoding="utf-8") as f:
        rows = {Path(r["path"]).name: r for r in csv.DictReader(f)}
    assert rows["a_finished.ipynb"]["verdict"] == "PASS" and rows["b_hangs.ipynb"]["verdict"] == "INTERRUPTED"
    ET.parse(out / "g.xml")
