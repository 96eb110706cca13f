"""`python -m checks FILE`: exit codes, JSON and JUnit output, and hostile or broken learner files."""
import json
import subprocess
import sys
import xml.etree.ElementTree as ET

import nbformat
import pytest

from tests import mistakes
from tests.conftest import ROOT, import_as_layer, run_checks, run_json

# A learner's correct file, written out (not read from solution/, whose forward may be tuned for speed).
CORRECT = """
import torch
from torch import nn


class LoRALinear(nn.Module):
    def __init__(self, in_features, out_features, r=4, alpha=8, bias=True):
        super().__init__()
        self.in_features, self.out_features, self.r, self.scaling = in_features, out_features, r, alpha / r
        self.base = nn.Linear(in_features, out_features, bias=bias)
        self.base.requires_grad_(False)
        self.A = nn.Parameter(torch.randn(r, in_features) / r)  # (r, in)
        self.B = nn.Parameter(torch.zeros(out_features, r))  # (out, r)

    def forward(self, x):
        down = x @ self.A.T
        return self.base(x) + self.scaling * (down @ self.B.T)

    def merged_weight(self):
        return self.base.weight + self.scaling * (self.B @ self.A)
"""
# B starting random: the drill's classic mistake.
B_RANDOM = CORRECT.replace("torch.zeros(out_features, r)", "torch.randn(out_features, r)")


@pytest.mark.parametrize("case", sorted(["syntax_error", "constructor_raises", "forward_raises",
                                          "forward_returns_none", "exits_in_forward", "missing_attribute_A"]))
def test_each_hostile_case_really_breaks_the_correct_file(case):
    assert HOSTILE[case][0] != CORRECT


def test_reference_solution_passes_with_exit_0():
    done = run_checks(ROOT / "solution" / "lora.py")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "11 of 11 checks passed." in done.stdout


def test_b_starting_random_fails_with_exit_1_naming_check_2(learner_file):
    assert B_RANDOM != CORRECT
    code, report = run_json(learner_file(B_RANDOM))
    assert code == 1 and report["passed"] is False
    check_2 = next(c for c in report["checks"] if c["id"] == 2)
    assert not check_2["passed"] and "B is not zero" in check_2["message"] and check_2["hint"]


def test_json_has_the_contracts_keys(learner_file):
    code, report = run_json(learner_file(CORRECT))
    assert code == 0 and report["passed"] is True
    assert [c["id"] for c in report["checks"]] == list(range(1, 12))
    assert all({"id", "name", "passed", "message"} <= set(c) for c in report["checks"])


def test_a_catalogued_mistake_imported_from_the_kits_tests_is_the_kits_code_not_a_check_result(learner_file):
    # The command line and the notebook share one loop (checks.runner.iter_results), which tests/test_checks.py
    # runs on every catalogued mistake; through the command line, a class from tests/ is the kit's code.
    name = sorted(mistakes.CAUGHT_BY)[0]
    code, report = run_json(learner_file(import_as_layer("tests.mistakes", name)))
    assert code == 2 and "the kit's own code" in report["error"] and "checks" not in report


def test_junit_file_lists_each_check_and_its_failures(learner_file, tmp_path):
    xml_path = tmp_path / "report.xml"
    done = run_checks(learner_file(B_RANDOM), "--junit", xml_path)
    assert done.returncode == 1
    suite = ET.parse(xml_path).getroot().find("testsuite")
    cases = suite.findall("testcase")
    assert len(cases) == 11
    failed = [c.get("name") for c in cases if c.find("failure") is not None]
    assert "check 2: output equals the base at init" in failed
    assert suite.get("failures") == str(len(failed))


# --- hostile and broken input: a clear message, exit 1 or 2, no traceback unless --verbose ---------------------
HOSTILE = {
    "syntax_error": ("class LoRALinear(nn.Module)\n    pass\n", 2, "SyntaxError"),
    "no_class": ("import torch\nX = 1\n", 2, "does not define a class named LoRALinear"),
    "misspelled_class": ("from torch import nn\nclass LoraLinear(nn.Module):\n    pass\n", 2, "rename LoraLinear to LoRALinear"),
    "constructor_raises": (CORRECT.replace("super().__init__()", "super().__init__()\n        raise ValueError('bad rank')"),
                           2, "ValueError: bad rank"),
    "forward_raises": (CORRECT.replace("down = x @ self.A.T", "down = x @ self.A"), 2, "forward on an input of shape"),
    "forward_returns_none": (CORRECT.replace("return self.base(x) + self.scaling", "self.base(x) + self.scaling"),
                             2, "forward returned None"),
    "wrong_output_shape": (CORRECT.replace("return self.base(x) +", "return torch.zeros(1) + self.base(x).sum() +"),
                           1, "check 4"),
    "nan_output": (CORRECT.replace("return self.base(x) +", "return float('nan') + self.base(x) +"), 1, "check 2"),
    "missing_attribute_A": (CORRECT.replace("self.A = nn.Parameter", "self.down = nn.Parameter").replace("self.A", "self.down"),
                            1, "no attribute 'A'"),
    "exits_while_loading": ("import sys\nsys.exit(0)\n", 2, "called sys.exit(0)"),
    "exits_in_forward": (CORRECT.replace("down = x @ self.A.T", "import sys; sys.exit(0)"), 2, "sys.exit(0)"),
    "kills_process": (CORRECT + "\nimport os\nos._exit(0)\n", 2, "ended while the file was loading"),
    "patches_torch_to_fake_a_pass": (B_RANDOM + "\ntorch.allclose = lambda *a, **k: True\n"
                                     "torch.equal = lambda *a, **k: True\n", 1, "B is not zero"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_input_gets_a_clear_message_and_exit_code(learner_file, case):
    source, code, words = HOSTILE[case]
    path = learner_file(source)
    done = run_checks(path, "--timeout", "30")
    assert done.returncode == code, done.stdout + done.stderr
    assert words in done.stdout
    assert "Traceback" not in done.stdout + done.stderr
    assert path.read_text() == source  # the learner's file is never changed
    assert sorted(p.name for p in path.parent.iterdir()) == ["layer.py"]  # and nothing is written beside it


def test_forward_that_never_returns_is_stopped_by_the_time_limit(learner_file):
    path = learner_file(CORRECT.replace("down = x @ self.A.T", "while True: pass"))
    done = run_checks(path, "--timeout", "8")
    assert done.returncode in (1, 2)
    assert "did not finish within 8 s" in done.stdout


def test_verbose_shows_the_traceback_and_the_files_output(learner_file):
    path = learner_file("print('hello from the learner')\n" + HOSTILE["constructor_raises"][0])
    quiet, loud = run_checks(path), run_checks(path, "--verbose")
    assert "hello from the learner" not in quiet.stdout and "Traceback" not in quiet.stdout
    assert "hello from the learner" in loud.stdout and "Traceback" in loud.stdout


def test_notebook_that_is_not_json_gets_exit_2(learner_file):
    done = run_checks(learner_file('{"cells": [', "broken.ipynb"))
    assert done.returncode == 2 and "is not a valid notebook" in done.stdout


def test_shipped_notebook_is_reported_as_an_unfilled_stub():
    done = run_checks(ROOT / "lora_mock.ipynb")
    assert done.returncode == 2 and "stub is not filled in yet" in done.stdout


def test_notebook_with_the_solution_in_its_stub_cell_passes(tmp_path):
    nb = nbformat.read(ROOT / "lora_mock.ipynb", as_version=4)
    stub = next(c for c in nb.cells if "lora-stub" in c.metadata.get("tags", []))
    stub.source = CORRECT
    path = tmp_path / "learner.ipynb"
    nbformat.write(nb, path)
    done = run_checks(path)
    assert done.returncode == 0, done.stdout


@pytest.mark.parametrize("args, words", [((), "the following arguments are required"),
                                         (("missing.py",), "does not exist"),
                                         (("README.md",), "neither a .py file nor a notebook"),
                                         (("solution/lora.py", "--timeout", "0"), "--timeout must be")])
def test_usage_errors_exit_2(args, words):
    done = run_checks(*args)
    assert done.returncode == 2 and words in done.stdout + done.stderr


def test_command_line_parent_does_not_import_torch():
    probe = "import sys, checks.cli; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True)
    assert done.stdout.strip() == "False", done.stderr


# --- a notebook is judged by the class a top-to-bottom run defines (the same engine as grade) -----------------


def notebook(tmp_path, stub_source, before=(), after=(), name="learner.ipynb", bom=False):
    """lora_mock.ipynb with the stub cell's source replaced, and code cells inserted just before and after it."""
    nb = nbformat.read(ROOT / "lora_mock.ipynb", as_version=4)
    stub = next(c for c in nb.cells if "lora-stub" in c.metadata.get("tags", []))
    stub.source = stub_source
    at = nb.cells.index(stub)
    nb.cells[at + 1:at + 1] = [nbformat.v4.new_code_cell(src) for src in after]
    nb.cells[at:at] = [nbformat.v4.new_code_cell(src) for src in before]
    path = tmp_path / name
    nbformat.write(nb, path)
    if bom:
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    return path


WITH_HELPER = CORRECT.replace("down = x @ self.A.T", "down = project_down(x, self.A)")
HELPER = "def project_down(x, A):\n    return x @ A.T\n"
USES_MATH = CORRECT.replace("torch.randn(r, in_features) / r", "torch.randn(r, in_features) / math.sqrt(r)")


def test_a_helper_in_an_earlier_cell_counts(tmp_path):
    assert WITH_HELPER != CORRECT
    code, report = run_json(notebook(tmp_path, WITH_HELPER, before=[HELPER]))
    assert code == 0, report


def test_a_later_cell_that_breaks_the_class_counts(tmp_path):
    breaks = "LoRALinear.forward = lambda self, x: self.base(x)  # the low-rank path dropped\n"
    code, report = run_json(notebook(tmp_path, CORRECT, after=[breaks]))
    assert code == 1 and not report["passed"], report


def test_a_class_using_math_the_notebook_never_imported_fails_as_it_would_in_jupyter(tmp_path):
    assert USES_MATH != CORRECT
    code, report = run_json(notebook(tmp_path, USES_MATH))
    assert code != 0 and "NameError: name 'math' is not defined" in json.dumps(report), report
    code, report = run_json(notebook(tmp_path, USES_MATH, before=["import math\n"], name="with_import.ipynb"))
    assert code == 0, report


def test_a_notebook_that_starts_with_a_byte_order_mark_loads(tmp_path):
    code, report = run_json(notebook(tmp_path, CORRECT, bom=True))
    assert code == 0, report


def test_a_py_file_that_starts_with_a_byte_order_mark_loads(tmp_path):
    path = tmp_path / "layer.py"
    path.write_bytes(b"\xef\xbb\xbf" + CORRECT.encode())
    code, report = run_json(path)
    assert code == 0, report


def test_a_syntax_error_in_the_class_cell_is_reported_as_one(tmp_path):
    code, report = run_json(notebook(tmp_path, "class LoRALinear(nn.Module)\n    pass\n"))
    assert code == 2 and "SyntaxError" in report["error"] and "never defined" not in report["error"], report


def test_the_cli_adds_no_imports_of_its_own(tmp_path):
    path = tmp_path / "layer.py"
    path.write_text(USES_MATH.replace("import torch\n", "import torch\nimport sys\n"), encoding="utf-8")
    code, report = run_json(path)
    assert code != 0 and "math" in json.dumps(report)


# Round four of the outside review: two valid notebooks that Jupyter runs and the kit once stopped.
CONTINUED = CORRECT.replace("        down = x @ self.A.T\n", "        if (x.shape[-1]\n                != self.in_features):\n"
                            "            raise ValueError('wrong width')\n        down = x @ self.A.T\n")


def test_a_line_continuing_a_condition_with_bang_equals_is_code_not_a_shell_command(tmp_path):
    assert CONTINUED != CORRECT
    code, report = run_json(notebook(tmp_path, CONTINUED))
    assert code == 0, report


def test_magics_become_comments_only_where_a_statement_starts():
    from checks.notebook import without_magics

    assert without_magics("%%time\nx = 1\n!ls\n  %timeit f()") == "# %%time\nx = 1\n# !ls\n#   %timeit f()"
    for code in ("y = (1\n     != 2)", "y = 1 \\\n    % 2", 's = """\n!not a command\n"""'):
        assert without_magics(code) == code, code


def test_display_works_without_an_import_as_in_jupyter(tmp_path):
    code, report = run_json(notebook(tmp_path, CORRECT + "\ndisplay(LoRALinear(4, 3))\n"))
    assert code == 0, report


# Round five of the outside review: valid notebooks Jupyter runs that the kit once stopped (or failed as the kit's
# code). IPython's own transformer now reads the cells; a skipped kit assignment leaves its names bound.
VALID_CELLS = {
    "display_inside_forward": (CORRECT.replace("        down = x @ self.A.T\n",
                                               "        display(x.shape)\n        down = x @ self.A.T\n"), []),
    "latex_cell_magic": (CORRECT, ["%%latex\n\\alpha / r\n"]),
    "line_magic_assigned": (CORRECT, ["t = %timeit -o -n1 -r1 sum(range(3))\n"]),
    "shell_output_assigned": (CORRECT, ["files = !ls\nprint(files)\n"]),
    "magic_indented_in_a_loop": (CORRECT, ["for _ in range(2):\n    %timeit -n1 -r1 sum(range(3))\n"]),
    "help_query": (CORRECT, ["LoRALinear?\n", "LoRALinear.forward??\n"]),
    "pip_line_continued": (CORRECT, ["%pip install \\\n    tqdm\n"]),
    "a_profiler_while_loading": (CORRECT, ["import cProfile\ncProfile.run('sum(range(10))')\n"]),
    "time_cell_magic_around_the_class": ("%%time\n" + CORRECT, []),
    "kit_results_read_later": (CORRECT, ["results = checks.run_all(LoRALinear)\n", "print(results)\n",
                                         "clock = checks.DrillClock()\n", "print(len(clock.laps))\n"]),
}


@pytest.mark.parametrize("case", sorted(VALID_CELLS))
def test_a_valid_notebook_runs_as_jupyter_would(tmp_path, case):
    stub, after = VALID_CELLS[case]
    code, report = run_json(notebook(tmp_path, stub, after=after))
    assert code == 0, report


def test_a_layer_in_a_float64_world_is_judged_in_its_own_dtype(learner_file):
    code, report = run_json(learner_file("import torch\ntorch.set_default_dtype(torch.float64)\n" + CORRECT))
    assert code == 0, report


def test_a_helper_module_beside_the_file_is_named_as_not_importable(tmp_path):
    (tmp_path / "lora_helpers.py").write_text("def down(x, A):\n    return x @ A.T\n", encoding="utf-8")
    path = tmp_path / "layer.py"
    path.write_text("from lora_helpers import down\n" + CORRECT, encoding="utf-8")
    code, report = run_json(path)
    assert code == 2 and "ModuleNotFoundError" in report["error"] and "beside it" in report["hint"], report
