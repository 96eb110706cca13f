"""Attacks on the verdict: a submission that tries to forge a pass, pass the kit's code off as its own, or harm
the grader, the other submissions or the reports. Each test is one attack; each must end in a failing verdict
(or be contained), never a pass. The threat model in README.md says what is and is not defended."""
from __future__ import annotations

import csv
import importlib.util
import json
import os
import py_compile
import shutil
import signal
import subprocess
import sys
import time
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import nbformat
import pytest

from tests.conftest import ROOT, run_checks
from tests.test_cli import B_RANDOM, CORRECT

SOLUTION_PATH = ROOT / "solution" / "lora.py"


def verdict(path: Path, *args, env_extra=None) -> tuple[int, dict, str]:
    """`python -m checks PATH --json`: exit code, the JSON object, and stderr."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env_extra or {})}
    done = subprocess.run([sys.executable, "-m", "checks", str(path), "--json", "--timeout", "60", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=180, env=env)
    assert done.stdout.strip(), done.stderr
    return done.returncode, json.loads(done.stdout), done.stderr


def assert_not_passed(code: int, report: dict, *words: str) -> None:
    assert code != 0 and report["passed"] is False, report
    text = json.dumps(report, ensure_ascii=False)
    for w in words:
        assert w in text, (w, report)


def write(tmp_path: Path, source: str, name: str = "layer.py") -> Path:
    path = tmp_path / name
    path.write_text(source, encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------- patching the kit


REGISTRY_MUTATED = B_RANDOM + """
import checks.sanity
for _k, (_name, _fn) in list(checks.sanity.CHECKS.items()):
    checks.sanity.CHECKS[_k] = (_name, lambda cls, **kw: "fine")
"""

MAKE_REPLACED = B_RANDOM + """
import checks.probe, checks.sanity, checks.oracle
from solution import LoRALinear as _Reference
_real_make = checks.probe.make
def _make(cls, *args, **kwargs):
    return _real_make(_Reference, *args, **kwargs)
for _m in (checks.probe, checks.sanity, checks.oracle):
    if hasattr(_m, "make"):
        _m.make = _make
checks.probe.smoke = lambda cls: None
"""

RUNNER_REPLACED = B_RANDOM + """
import checks.runner, checks.report, checks.sanity, checks.worker
_Result = checks.report.Result
def _pass(number, cls, **given):
    return _Result(number, checks.sanity.CHECKS[number][0], True, "fine")
checks.runner.run_one = _pass
for _name in ("emit_checks", "run_checks", "send", "emit"):
    if hasattr(checks.worker, _name):
        setattr(checks.worker, _name, lambda *a, **k: None)
if hasattr(checks.runner, "iter_results"):
    checks.runner.iter_results = lambda cls, *a, **k: iter([_pass(n, cls) for n in checks.sanity.CHECKS])
"""

CODE_SWAPPED = B_RANDOM + """
import checks.sanity
for _k, (_name, _fn) in list(checks.sanity.CHECKS.items()):
    _fn.__code__ = (lambda cls, **kw: "fine").__code__
"""


@pytest.mark.parametrize("source", [REGISTRY_MUTATED, MAKE_REPLACED, RUNNER_REPLACED, CODE_SWAPPED],
                         ids=["registry_mutated", "make_replaced", "runner_and_emit_replaced", "code_swapped"])
def test_patching_the_kit_never_turns_a_broken_layer_into_a_pass(tmp_path, source):
    code, report, _ = verdict(write(tmp_path, source))
    assert_not_passed(code, report)


def test_a_file_that_patches_the_kit_is_told_so(tmp_path):
    code, report, _ = verdict(write(tmp_path, CODE_SWAPPED))
    assert_not_passed(code, report, "reached into the checking process", "refused replacing the code of the kit's")


# --------------------------------------------------------------------------------------- forging the report

# Whatever the channel is (a file named in argv, an inherited pipe), write 11 passes and an end marker to it.
FORGE = r"""
import json, os, stat, sys
lines = [json.dumps({"event": "loaded"})]
for n in range(1, 12):
    lines.append(json.dumps({"event": "start", "id": n, "name": f"check {n}"}))
    lines.append(json.dumps({"event": "result", "id": n, "name": f"check {n}", "passed": True, "message": "fine",
                             "hint": ""}))
lines.append(json.dumps({"event": "done"}))
forged = ("\n".join(lines) + "\n").encode()
def forge():
    for arg in sys.argv[1:]:
        if os.path.isfile(arg) and arg.endswith(".jsonl"):
            with open(arg, "w") as f:
                f.write(forged.decode())
    for fd in range(3, 64):
        try:
            if stat.S_ISFIFO(os.fstat(fd).st_mode):
                os.write(fd, forged)
        except OSError:
            pass
"""

FORGE_AND_EXIT = B_RANDOM + FORGE + "forge()\nos._exit(0)\n"
FORGE_AT_EXIT = B_RANDOM + FORGE + "import atexit\natexit.register(forge)\n"
FORGE_HUGE_LINE = B_RANDOM + FORGE + """
for fd in range(3, 64):
    try:
        if stat.S_ISFIFO(os.fstat(fd).st_mode):
            os.write(fd, b"x" * (8 << 20))
    except OSError:
        pass
"""


@pytest.mark.parametrize("source", [FORGE_AND_EXIT, FORGE_AT_EXIT, FORGE_HUGE_LINE],
                         ids=["forge_then_exit", "forge_at_exit", "flood_the_channel"])
def test_a_forged_report_is_a_failure_never_a_pass(tmp_path, source):
    code, report, _ = verdict(write(tmp_path, source))
    assert_not_passed(code, report)


def test_a_forged_report_is_named_as_not_authentic(tmp_path):
    code, report, _ = verdict(write(tmp_path, FORGE_AND_EXIT))
    assert_not_passed(code, report, "not authentic")


def test_the_key_cannot_be_read_again_from_stdin_argv_or_environment(tmp_path):
    probe = CORRECT + """
import os, sys
seen = sys.stdin.read() if not sys.stdin.closed else ""
assert not seen, "stdin still holds something"
import re
assert not any(re.search(r"[0-9a-f]{32}", a) for a in sys.argv[1:]), sys.argv
assert not any(re.search(r"[0-9a-f]{32}", v) for v in os.environ.values())
"""
    code, report, _ = verdict(write(tmp_path, probe))
    assert code == 0, report


# --------------------------------------------------------------------------------------- the kit's code as one's own


PASS_OFFS = {
    "import_solution": "from solution import LoRALinear\n",
    "subclass_solution": "from solution import LoRALinear as _R\nclass LoRALinear(_R):\n    pass\n",
    "relabel_module": "from solution import LoRALinear\nLoRALinear.__module__ = 'learner'\n"
                      "LoRALinear.__qualname__ = 'LoRALinear'\n",
    "relabel_subclass": "from solution import LoRALinear as _R\nclass LoRALinear(_R):\n    pass\n"
                        "_R.__module__ = 'learner'\nLoRALinear.__module__ = 'learner'\n",
    "exec_solution_source": f"exec(compile(open({str(SOLUTION_PATH)!r}).read(), 'mine.py', 'exec'))\n",
    "exec_with_code_relabelled": (
        f"ns = {{}}\nexec(compile(open({str(SOLUTION_PATH)!r}).read(), 'mine.py', 'exec'), ns)\n"
        "import types\nLoRALinear = ns['LoRALinear']\n"
        "for _k, _v in list(vars(LoRALinear).items()):\n"
        "    if isinstance(_v, types.FunctionType):\n"
        "        _v.__code__ = _v.__code__.replace(co_filename='layer.py')\n"),
    "methods_borrowed": "import torch\nfrom torch import nn\nfrom solution import LoRALinear as _R\n"
                        "class LoRALinear(nn.Module):\n    __init__ = _R.__init__\n    forward = _R.forward\n"
                        "    merged_weight = _R.merged_weight\n",
    "from_the_tests": "from tests.correct_layers import KaimingA as LoRALinear\n",
    "swap_in_with_the_demo_variable": "import checks\n" + B_RANDOM + "\nLoRALinear = checks.swap_in(LoRALinear)\n",
    "sets_the_demo_variable_itself": "import os, checks\nos.environ['LORA_DRILL_SOLUTION'] = '1'\n" + B_RANDOM
                                     + "\nLoRALinear = checks.swap_in(LoRALinear)\n",
}


@pytest.mark.parametrize("case", sorted(PASS_OFFS))
def test_the_kits_code_is_not_the_learners(tmp_path, case):
    code, report, _ = verdict(write(tmp_path, PASS_OFFS[case]), env_extra={"LORA_DRILL_SOLUTION": "1"})
    assert_not_passed(code, report)
    if case not in ("swap_in_with_the_demo_variable",):  # that one is graded on its own (broken) layer
        assert "kit" in report.get("error", ""), report


# Round four: layers with no LoRA arithmetic of their own, whose forward and merge are the kit's own functions.
DELEGATES = {
    "forward_is_the_oracles_formula": CORRECT.replace(
        "        down = x @ self.A.T\n        return self.base(x) + self.scaling * (down @ self.B.T)",
        "        from checks import oracle\n"
        "        zeros = torch.zeros(*x.shape[:-1], self.out_features)\n"
        "        return oracle.formula(x, self.base.weight, self.base.bias, self.A, self.B, self.scaling, zeros)"
        ".out.float()"),
    "forward_is_the_labs_serve_mixed": CORRECT.replace(
        "        down = x @ self.A.T\n        return self.base(x) + self.scaling * (down @ self.B.T)",
        "        from checks.lab import serve_mixed\n"
        "        return serve_mixed([self], x, torch.zeros(x.shape[:-1], dtype=torch.long))"),
}


@pytest.mark.parametrize("case", sorted(DELEGATES))
def test_a_layer_whose_work_is_the_kits_own_code_is_the_kits(tmp_path, case):
    assert DELEGATES[case] != CORRECT
    code, report, _ = verdict(write(tmp_path, DELEGATES[case]))
    assert_not_passed(code, report, "the kit's code", "it ran the kit's own")


def test_a_layer_cannot_set_a_profiler_or_tracer_that_would_blind_the_kit(tmp_path):
    """While it answers the parent's questions; a notebook may profile itself while it loads (round five)."""
    blinds = CORRECT.replace("        down = x @ self.A.T\n", "        __import__('sys').setprofile(None)\n"
                                                             "        down = x @ self.A.T\n")
    code, report, _ = verdict(write(tmp_path, blinds))
    assert_not_passed(code, report, "reached into the checking process", "sys.setprofile")
    code, report, _ = verdict(write(tmp_path, "import sys\nsys.setprofile(None)\n" + CORRECT, "loads.py"))
    assert code == 0, report


# Round five: the kit's formula reached by ways that hide its file or name, or from inside an audit hook.
_FORWARD = "        down = x @ self.A.T\n        return self.base(x) + self.scaling * (down @ self.B.T)"
_ORACLE_CALL = ("zeros = torch.zeros(*x.shape[:-1], self.out_features)\n        return {f}(x, self.base.weight, "
                "self.base.bias, self.A, self.B, self.scaling, zeros).out.float()")
_DEEP = """
import types
def _deep(code, **changes):  # the code object and every one nested in it, changed alike
    consts = tuple(_deep(c, **changes) if isinstance(c, types.CodeType) else c for c in code.co_consts)
    return code.replace(co_consts=consts, **changes)
"""
HIDDEN_DELEGATES = {
    "a_copy_under_another_file_name_with_the_kits_globals": _DEEP + CORRECT.replace(
        _FORWARD, "        import checks.oracle as o\n"
        "        f = types.FunctionType(_deep(o.formula.__code__, co_filename='mine.py'), o.formula.__globals__)\n"
        "        " + _ORACLE_CALL.format(f="f")),
    "renamed_as_the_kits_dropout_switch": _DEEP + CORRECT.replace(
        _FORWARD, "        import checks.oracle as o\n"
        "        f = types.FunctionType(_deep(o.formula.__code__, co_name='__torch_function__'), "
        "o.formula.__globals__)\n        " + _ORACLE_CALL.format(f="f")),
    "called_from_an_audit_hook_of_its_own": CORRECT + "\nimport sys\nsys.addaudithook(lambda *a: None)\n",
}


@pytest.mark.parametrize("case", sorted(HIDDEN_DELEGATES))
def test_the_kits_code_in_disguise_is_still_the_kits(tmp_path, case):
    code, report, _ = verdict(write(tmp_path, HIDDEN_DELEGATES[case]))
    assert_not_passed(code, report)
    assert "the kit's code" in report.get("error", "") or "reached into" in report.get("error", ""), report


def test_a_learners_own_correct_layer_is_not_mistaken_for_the_kits(tmp_path):
    code, report, _ = verdict(write(tmp_path, CORRECT))
    assert code == 0, report


# The plainest correct layers, written by an outsider from the contract and the hints: each has the same code as
# some of the kit's own (a test layer's forward, another's __init__, the solution's __init__), and each was once
# refused as "the kit's code". Only the whole of the solution's forward and __init__ is the kit's.
PLAIN_LAYERS = {
    "hint_shaped_forward_and_chained_freeze": 'import torch\nfrom torch import nn\n\n\nclass LoRALinear(nn.Module):\n    def __init__(self, in_features, out_features, r=4, alpha=8, bias=True):\n        super().__init__()\n        self.in_features, self.out_features, self.r = in_features, out_features, r\n        self.scaling = alpha / r\n        self.base = nn.Linear(in_features, out_features, bias=bias).requires_grad_(False)\n        self.A = nn.Parameter(torch.randn(r, in_features) / r)\n        self.B = nn.Parameter(torch.zeros(out_features, r))\n\n    def forward(self, x):\n        return self.base(x) + self.scaling * ((x @ self.A.T) @ self.B.T)\n\n    def merged_weight(self):\n        return self.base.weight + self.scaling * (self.B @ self.A)\n',
    "the_same_init_as_the_solution": 'import torch\nfrom torch import nn\n\n\nclass LoRALinear(nn.Module):\n    def __init__(self, in_features, out_features, r=4, alpha=8, bias=True):\n        super().__init__()\n        self.in_features, self.out_features, self.r = in_features, out_features, r\n        self.scaling = alpha / r\n        self.base = nn.Linear(in_features, out_features, bias=bias)\n        self.base.requires_grad_(False)\n        self.A = nn.Parameter(torch.randn(r, in_features) / r)\n        self.B = nn.Parameter(torch.zeros(out_features, r))\n\n    def forward(self, x):\n        return self.base(x) + self.scaling * ((x @ self.A.T) @ self.B.T)\n\n    def merged_weight(self):\n        return self.base.weight + self.scaling * (self.B @ self.A)\n',
    "a_custom_autograd_function": 'import torch\nfrom torch import nn\n\n\nclass _LowRank(torch.autograd.Function):\n    @staticmethod\n    def forward(ctx, x, A, B, s):\n        down = x @ A.T\n        ctx.save_for_backward(x, A, B, down)\n        ctx.s = s\n        return s * (down @ B.T)\n\n    @staticmethod\n    def backward(ctx, g):\n        x, A, B, down = ctx.saved_tensors\n        s = ctx.s\n        gB_ = g @ B  # (..., r)\n        gx = s * (gB_ @ A)\n        gA = s * gB_.reshape(-1, gB_.shape[-1]).T @ x.reshape(-1, x.shape[-1])\n        gB = s * g.reshape(-1, g.shape[-1]).T @ down.reshape(-1, down.shape[-1])\n        return gx, gA, gB, None\n\n\nclass LoRALinear(nn.Module):\n    def __init__(self, in_features, out_features, r=4, alpha=8, bias=True):\n        super().__init__()\n        self.in_features, self.out_features, self.r = in_features, out_features, r\n        self.scaling = alpha / r\n        self.base = nn.Linear(in_features, out_features, bias=bias).requires_grad_(False)\n        self.A = nn.Parameter(torch.randn(r, in_features) / r)\n        self.B = nn.Parameter(torch.zeros(out_features, r))\n\n    def forward(self, x):\n        return self.base(x) + _LowRank.apply(x, self.A, self.B, self.scaling)\n\n    def merged_weight(self):\n        with torch.no_grad():\n            return self.base.weight + self.scaling * (self.B @ self.A)\n',
}


@pytest.mark.parametrize("case", sorted(PLAIN_LAYERS))
def test_the_plainest_correct_layer_is_the_learners_not_the_kits(tmp_path, case):
    code, report, _ = verdict(write(tmp_path, PLAIN_LAYERS[case]))
    assert code == 0, report


def notebook_with(tmp_path: Path, stub_source: str, name="learner.ipynb", extra_cells=()) -> Path:
    nb = nbformat.read(ROOT / "lora_mock.ipynb", as_version=4)
    stub = next(c for c in nb.cells if "lora-stub" in c.metadata.get("tags", []))
    stub.source = stub_source
    at = nb.cells.index(stub) + 1
    for offset, source in enumerate(extra_cells):
        nb.cells.insert(at + offset, nbformat.v4.new_code_cell(source))
    path = tmp_path / name
    nbformat.write(nb, path)
    return path


@pytest.mark.parametrize("case", ["relabel_module", "exec_solution_source", "from_the_tests"])
def test_the_kits_code_is_not_the_learners_in_a_notebook_either(tmp_path, case):
    code, report, _ = verdict(notebook_with(tmp_path, PASS_OFFS[case]))
    assert_not_passed(code, report, "kit")


def test_a_notebook_that_brings_its_own_checks_package_gets_the_kits(tmp_path):
    fake = (
        "import os, sys, importlib\n"
        "os.makedirs('checks', exist_ok=True)\n"
        "open('checks/__init__.py', 'w').write('def run_all(c): print(\"11 of 11\")\\n"
        "CHECKS = {}\\n')\n"
        "for m in [m for m in sys.modules if m == 'checks' or m.startswith('checks.')]:\n"
        "    del sys.modules[m]\n"
        "sys.path.insert(0, os.getcwd())\n"
        "importlib.invalidate_caches()\n"
        "import checks\n")
    code, report, _ = verdict(notebook_with(tmp_path, B_RANDOM, extra_cells=[fake]))
    assert_not_passed(code, report)


# --------------------------------------------------------------------------------------- output


def peak_rss_mb_of_cli(*argv, cwd=ROOT) -> tuple[float, subprocess.CompletedProcess]:
    """The command line's own peak memory (VmHWM of the parent process only, not of its workers)."""
    harness = ("import sys, runpy\nfrom checks.cli import main\ncode = main(sys.argv[1:])\n"
               "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]\n"
               "print('VmHWM', hwm, file=sys.stderr)\nsys.exit(code)\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", harness, *map(str, argv)], cwd=cwd, capture_output=True,
                          text=True, timeout=600, env=env)
    line = [x for x in done.stderr.splitlines() if x.startswith("VmHWM")]
    assert line, done.stderr[-2000:]
    return int(line[-1].split()[1]) / 1024, done


PRINTS_200_MB = "import sys\nfor _ in range(200):\n    sys.stdout.write('x' * (1 << 20))\n" \
                "for _ in range(20):\n    sys.stderr.write('y' * (1 << 20))\n" + CORRECT


def test_printing_200_mb_keeps_the_command_line_under_200_mb(tmp_path):
    mb, done = peak_rss_mb_of_cli(write(tmp_path, PRINTS_200_MB), "--verbose")
    assert done.returncode == 0, done.stdout[-3000:]
    assert mb < 200, f"peak {mb:.0f} MB"
    assert "dropped" in done.stdout  # the kept output says how much was left out
    assert len(done.stdout) < 2 << 20


def test_printing_200_mb_keeps_grade_under_300_mb(tmp_path):
    folder = tmp_path / "cohort"
    folder.mkdir()
    write(folder, PRINTS_200_MB, "a.py")
    write(folder, PRINTS_200_MB, "b.py")
    mb, done = peak_rss_mb_of_cli("grade", folder, "--jobs", "2", "--sandbox", "none")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert mb < 300, f"peak {mb:.0f} MB"


CONTROL = "\\x1b[2J\\x1b[H\\x1b[32m11 of 11 checks passed.\\x1b[0m\\r\\x00\\x07\\u202e"
CONTROLS_IN_MESSAGE = CORRECT.replace("down = x @ self.A.T", f"raise ValueError('{CONTROL}')")


def test_control_characters_never_reach_the_terminal(tmp_path):
    done = run_checks(write(tmp_path, CONTROLS_IN_MESSAGE))
    assert done.returncode != 0
    for ch in ("\x1b", "\r", "\x00", "\x07", "\u202e"):
        assert ch not in done.stdout + done.stderr, repr(ch)
    assert "ValueError" in done.stdout


def test_control_characters_keep_csv_and_junit_clean(tmp_path):
    folder = tmp_path / "cohort"
    folder.mkdir()
    write(folder, CONTROLS_IN_MESSAGE, "a.py")
    write(folder, CONTROLS_IN_MESSAGE, "evil\x1b[2J\r.py")  # a file name is rendered too
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "checks", "grade", str(folder), "--sandbox", "none", "--csv",
                           str(out / "g.csv"), "--junit", str(out / "g.xml")], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, env=env)
    assert done.returncode == 1
    for ch in ("\x1b", "\r", "\x00", "\x07"):
        assert ch not in done.stdout and ch not in (out / "g.csv").read_text(encoding="utf-8"), repr(ch)
    ET.parse(out / "g.xml")  # parseable
    with open(out / "g.csv", newline="", encoding="utf-8") as f:
        assert len(list(csv.DictReader(f))) == 2


# --------------------------------------------------------------------------------------- containment in grade


def bwrap_works() -> str:
    if not shutil.which("bwrap"):
        return "bubblewrap (bwrap) is not installed"
    done = subprocess.run(["bwrap", "--ro-bind", "/", "/", "--unshare-all", "--die-with-parent", "true"],
                          capture_output=True, text=True)
    return "" if done.returncode == 0 else f"bwrap cannot run here: {done.stderr.strip()[:200]}"


needs_bwrap = pytest.mark.skipif(bool(bwrap_works()), reason=bwrap_works() or "bwrap works")


def grade(*args, timeout=600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "checks", "grade", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env=env)


def rewrites_victim(victim: Path) -> str:
    return CORRECT + f"""
from pathlib import Path
for target in (Path({str(victim)!r}), Path(__file__).resolve().parent / {victim.name!r}):
    try:
        target.write_text("class LoRALinear:\\n    pass\\n")
    except OSError:
        pass
"""


@pytest.mark.parametrize("sandbox", ["none", pytest.param("bwrap", marks=needs_bwrap)])
def test_one_submission_cannot_change_how_another_is_graded(tmp_path, sandbox):
    folder = tmp_path / "cohort"
    folder.mkdir()
    victim = write(folder, CORRECT, "b_victim.py")
    write(folder, rewrites_victim(victim), "a_attacker.py")
    done = grade(folder, "--json", "--sandbox", sandbox)
    items = {Path(i["path"]).name: i for i in json.loads(done.stdout)}
    assert items["b_victim.py"]["passed"], items["b_victim.py"]
    if sandbox == "bwrap":
        assert victim.read_text(encoding="utf-8") == CORRECT  # the original is out of the submission's reach
        assert items["b_victim.py"]["sandbox"] == "bwrap"


def leftover(marker: str) -> str:
    """A .py submission that leaves a detached process behind to rewrite its CSV row to PASS later."""
    return B_RANDOM + f"""
import os, sys
CODE = '''
import os, sys, time
def find_csv():
    pid = int(sys.argv[2])
    while pid > 1:
        try:
            args = open(f"/proc/{{pid}}/cmdline", "rb").read().split(b"\\\\0")
            cwd = os.readlink(f"/proc/{{pid}}/cwd")
        except OSError:
            return None
        if b"--csv" in args:
            return os.path.join(cwd, args[args.index(b"--csv") + 1].decode())
        pid = int(open(f"/proc/{{pid}}/stat").read().rsplit(")", 1)[1].split()[1])
    return None
path = find_csv()
end = time.monotonic() + 30
while time.monotonic() < end:
    try:
        text = open(path).read()
        if "FAIL" in text:
            open(path, "w").write(text.replace("FAIL", "PASS"))
    except (OSError, TypeError):
        pass
    time.sleep(0.05)
'''
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.execv(sys.executable, [sys.executable, "-c", CODE, {marker!r}, str(os.getppid())])
    os._exit(0)
"""


def processes_with(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


@pytest.mark.parametrize("sandbox", ["none", pytest.param("bwrap", marks=needs_bwrap)])
def test_no_process_outlives_the_grader_to_rewrite_the_report(tmp_path, sandbox):
    marker = f"lora-drill-leftover-{uuid.uuid4().hex}"
    folder = tmp_path / "cohort"
    folder.mkdir()
    write(folder, leftover(marker), "leaves_a_process.py")
    report = tmp_path / "grades.csv"
    try:
        done = grade(folder, "--csv", report, "--sandbox", sandbox)
        assert done.returncode == 1, done.stdout + done.stderr
        survivors = processes_with(marker)
        for _ in range(20):  # give a surviving process every chance to do its work
            time.sleep(0.1)
        assert survivors == [], "a submission's process outlived the grader"
        assert "PASS" not in report.read_text(encoding="utf-8")
    finally:
        for pid in processes_with(marker):
            os.kill(pid, signal.SIGKILL)


@needs_bwrap
@pytest.mark.parametrize("attack", ["import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n",
                                    "import os, signal\nos.kill(-1, signal.SIGKILL)\n"],
                         ids=["kills_its_parent", "kills_everything_it_can"])
def test_a_submission_cannot_kill_the_grader(tmp_path, attack):
    folder = tmp_path / "cohort"
    folder.mkdir()
    write(folder, CORRECT + attack, "a_killer.py")
    write(folder, CORRECT, "b_fine.py")
    done = grade(folder, "--json", "--sandbox", "bwrap")
    assert done.returncode in (0, 1), done.stderr  # the grader lived to report
    items = {Path(i["path"]).name: i for i in json.loads(done.stdout)}
    assert set(items) == {"a_killer.py", "b_fine.py"}  # the killer's own verdict may be anything
    assert items["b_fine.py"]["passed"], items["b_fine.py"]


@needs_bwrap
def test_a_sandboxed_submission_sees_neither_the_originals_nor_the_network(tmp_path):
    folder = tmp_path / "cohort"
    folder.mkdir()
    secret = write(folder, "not for you", "z_other_learner.py")
    probe = CORRECT + f"""
import os, socket
assert not os.path.exists({str(secret)!r}), "sees another submission"
assert not os.path.exists({str(folder)!r}), "sees the cohort folder"
try:
    socket.create_connection(("1.1.1.1", 53), timeout=2)
    raise AssertionError("has network")
except OSError:
    pass
"""
    write(folder, probe, "a_probe.py")
    done = grade(folder / "a_probe.py", "--json", "--sandbox", "bwrap")
    item = json.loads(done.stdout)[0]
    assert item["passed"], item


@needs_bwrap
def test_a_child_process_in_the_sandbox_finds_neither_the_solution_nor_the_judge(tmp_path):
    """A child process has no guard; in the sandbox it still cannot run the solution or the parent's judge on the
    parent's questions (an outsider's replay forgery passed this way without bwrap, round three)."""
    probe = CORRECT + f"""
import subprocess, sys
def child(code):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
kit = {str(ROOT)!r}
assert child(f"import sys; sys.path.insert(0, {{kit!r}}); import solution").returncode != 0, "imported the solution"
assert child(f"import sys; sys.path.insert(0, {{kit!r}}); from checks.judge import Exam").returncode != 0, \
    "imported the judge"
read = child(f"print(len(open({{kit!r}} + '/checks/judge.py').read()))")
assert read.returncode != 0 or read.stdout.strip() == "0", "a child process read the judge's source"
"""
    done = grade(write(tmp_path, probe, "a_probe.py"), "--json", "--sandbox", "bwrap")
    item = json.loads(done.stdout)[0]
    assert item["passed"], item


# --------------------------------------------------------------------------------------- an outsider's forgeries
# Written by a reviewer who had not seen this file, against the signed channel and the tamper check: each is the
# broken layer B_RANDOM plus the lines below. The guard (checks/guard.py) refuses what each needs.

OUTSIDER_FORGES = {
    'memory_search_for_the_writer': '\nimport gc, os\nimport checks.channel, checks.runner, checks.provenance\n_w = next(o for o in gc.get_objects() if isinstance(o, checks.channel.Writer))\n_reg = checks.runner.registry()\n_w.send("loaded", classes=[], stopped=None)\nfor _n, _name, _fn in _reg:\n    _w.send("start", id=_n, name=_name)\n    _w.send("result", id=_n, name=_name, passed=True, message="ok", hint="")\n_w.send("after", checks=checks.provenance.describe_checks(_reg), changed=[])\n_w.send("end")\nos._exit(0)\n',
    'construction_delegated_to_the_solution': '\nimport solution.lora as _S\ndef __init__(self, *a, **k):\n    nn.Module.__init__(self)\n    ref = _S.LoRALinear(*a, **k)\n    self.__dict__.update({k2: v for k2, v in ref.__dict__.items() if k2 != "training"})\nLoRALinear.__init__ = __init__\n',
    'method_code_swapped': '\nimport checks.runner as _r, checks.worker as _wk\ndef _pass(number, name, fn, cls, **given):\n    return Result(number, name, True, "ok")\ndef _nochange(self, registry):\n    return []\n_r.run_entry.__code__ = _pass.__code__\n_wk.Snapshot.changes.__code__ = _nochange.__code__\n',
    'new_returns_a_solution_instance': '\nimport solution.lora as _S\nLoRALinear.__new__ = staticmethod(lambda cls, *a, **k: _S.LoRALinear(*a, **k))\ndel LoRALinear.__init__, LoRALinear.forward, LoRALinear.merged_weight\n',
    'solution_source_read_and_renamed': '\nimport os, checks\n_src = open(os.path.join(os.path.dirname(os.path.dirname(checks.__file__)), "solution", "lora.py")).read()\nexec(compile(_src.replace("rows", "rows_").replace("self.in_features, self.out_features, self.r = ", "self.r, self.in_features, self.out_features = ").replace("= in_features, out_features, r", "= r, in_features, out_features"), __file__, "exec"))\n',
    'writer_code_swapped': '\nimport checks.channel as _c\ndef send(self, kind, **fields):\n    if kind == "result":\n        fields.update(passed=True, message="ok", hint="")\n    if kind == "after":\n        fields["changed"] = []\n    body = json.dumps({"seq": self._seq, "kind": kind, **fields}, ensure_ascii=True).encode()\n    mac = self._mac.copy()\n    mac.update(body)\n    data = mac.hexdigest().encode() + b" " + body + b"\\n"\n    while data:\n        data = data[os.write(self._fd, data):]\n    self._seq += 1\n_c.Writer.send.__code__ = send.__code__\n',
}


# Round three: the parent's judge imported in the worker works out exactly what the parent expects, and so answers
# every question without a line of LoRA (an outsider's forgery passed 11 of 11 this way, under bwrap too).
OUTSIDER_FORGES["judge_imported_for_its_answers"] = (
    "\nimport checks.judge as _j\n_key = _j.Exam([]).prepare\n")
OUTSIDER_FORGES["judge_source_read"] = (
    "\nimport os, checks\n_src = open(os.path.join(os.path.dirname(checks.__file__), 'judge.py')).read()\n")
OUTSIDER_FORGES["judge_bytecode_read"] = (
    "\nimport glob, os, checks\nfor _p in glob.glob(os.path.join(os.path.dirname(checks.__file__), '__pycache__', "
    "'judge.*')):\n    open(_p, 'rb').read()\n")


@pytest.mark.parametrize("case", sorted(OUTSIDER_FORGES))
def test_an_outsiders_forgery_is_refused_and_named(tmp_path, case):
    if case == "judge_bytecode_read":  # the bytecode a normal import leaves (not written with PYTHONDONTWRITEBYTECODE)
        source = ROOT / "checks" / "judge.py"
        py_compile.compile(str(source), cfile=importlib.util.cache_from_source(str(source)), doraise=True)
    code, report, _ = verdict(write(tmp_path, B_RANDOM + OUTSIDER_FORGES[case]))
    assert_not_passed(code, report, "reached into the checking process")


def test_the_guard_leaves_a_correct_layer_that_imports_and_introspects_alone(tmp_path):
    """What a learner's layer may do: import inspect, typing and collections, build namedtuples, print tracebacks."""
    extra = """
import collections, inspect, traceback, typing
Pair = collections.namedtuple("Pair", "a b")
try:
    1 / 0
except ZeroDivisionError:
    _ = traceback.format_exc()
_ = inspect.signature(LoRALinear.__init__)
"""
    code, report, _ = verdict(write(tmp_path, CORRECT + extra))
    assert code == 0, report


# Forgeries that reach the worker's own variables by walking the interpreter's frames
# (`inspect.currentframe().f_back`…), which no audit hook sees, and write a well-formed, signed report: eleven
# passes. Each is the broken layer B_RANDOM (B starts random: checks 2 and 8) plus the lines below. What stops them
# is that the verdict on checks 1–9 is not the worker's to give: the parent judges the layer's answers to its own
# questions (checks/judge.py), so a forger must answer like a correct LoRA layer, which is the exercise.
_WALK = """
import inspect, os
_forward = LoRALinear.forward
def _worker_frame():
    f = inspect.currentframe()
    while f is not None and "send" not in f.f_locals:
        f = f.f_back
    return f
_busy = []
def forward(self, x):
    f = _worker_frame()
    if f is not None and not _busy:
        _busy.append(True)
        send = f.f_locals["send"]
        import checks.runner, checks.provenance
        reg = checks.runner.registry()
        for n, name, fn in reg:
            send("start", id=n, name=name)
            send("result", id=n, name=name, passed=True, message="ok", hint="")
        for n, question in enumerate(f.f_locals.get("questions", [])):
            send("answer", n=n, answer=ANSWER(question))
        send("after", checks=checks.provenance.describe_checks(reg), changed=[])
        send("end")
        os._exit(0)
    return _forward(self, x)
LoRALinear.forward = forward
"""
JUDGED_FORGES = {
    # the report alone, as a forger who does not know of the questions would send it
    "frames_walked_to_the_writer": _WALK.replace("ANSWER(question)", "{}").replace(
        '        for n, question in enumerate(f.f_locals.get("questions", [])):\n'
        '            send("answer", n=n, answer={})\n', ""),
    # eleven passes, and the questions answered by the kit's own answering code with the file's (broken) layer
    "forged_passes_with_the_layers_true_answers": "\nimport checks.answers\n"
    + _WALK.replace("ANSWER(question)", 'checks.answers.answer(LoRALinear, question, guard=f.f_locals["watch"])'),
    # eleven passes, and answers made up from the question itself (its W0 as the merge, its x as the output)
    "forged_passes_with_made_up_answers": _WALK.replace(
        "ANSWER(question)", '{k: question.get(v) for k, v in (("merged", "W0"), ("out", "x"), ("out_shape", "lead"), '
                            '("A", "A"), ("B", "B"), ("grad_x", "x"), ("grad_A", "A"), ("grad_B", "B"))}'),
    # eleven passes, and every answer left empty
    "forged_passes_with_empty_answers": _WALK.replace("ANSWER(question)", "{}"),
}


# Round four: signed messages whose fields the parent could not read once crashed it with a traceback.
_SIGNED = """
import inspect, json, os
_f = inspect.currentframe()
while _f is not None and "send" not in _f.f_locals:
    _f = _f.f_back
_w = _f.f_locals["send"].__self__
_body = (BODY).encode()
_mac = _w._mac.copy()
_mac.update(_body)
os.write(_w._fd, _mac.hexdigest().encode() + b" " + _body + b"\\n")
_w._seq += 1
"""
MALFORMED = {
    "nested_200000_lists_deep": _SIGNED.replace(
        "BODY", '\'{"seq": %d, "kind": "cell", "number": 1, "line": %s}\' % (_w._seq, "[" * 200000 + "]" * 200000)'),
    "loaded_with_a_number_for_a_class": _SIGNED.replace(
        "BODY", 'json.dumps({"seq": _w._seq, "kind": "loaded", "classes": [1], "stopped": None})'),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_signed_message_with_unreadable_fields_is_not_authentic_never_a_traceback(tmp_path, case):
    code, report, stderr = verdict(write(tmp_path, B_RANDOM + MALFORMED[case]))
    assert_not_passed(code, report, "not authentic")
    assert "Traceback" not in stderr


@pytest.mark.parametrize("case", sorted(JUDGED_FORGES))
def test_a_signed_forged_report_fails_because_the_parent_judges_the_answers(tmp_path, case):
    code, report, _ = verdict(write(tmp_path, B_RANDOM + JUDGED_FORGES[case]))
    assert_not_passed(code, report)
    if case == "forged_passes_with_the_layers_true_answers":  # the layer's own faults, named by the parent
        failing = {c["id"]: c["message"] for c in report["checks"] if not c["passed"]}
        assert {2, 8} <= set(failing), report
        assert "judged by the kit's own process" in failing[2], report


# A layer that behaves correctly only while it is being checked (it sees `checks.sanity` in sys.modules, or a kit
# frame on the call stack) passes: no checker that runs the code can tell it from a correct layer, and to behave it
# must hold a correct LoRA layer. README's threat model says so. Strict, so the day one of these is caught, the
# threat model gets corrected.
UNDEFENDED_FORGES = {
    'behaves_only_when_the_kit_is_imported': '\nimport sys\n_orig_init = LoRALinear.__init__\ndef __init__(self, *a, **k):\n    _orig_init(self, *a, **k)\n    if "checks.sanity" in sys.modules:\n        with torch.no_grad():\n            self.B.zero_()\nLoRALinear.__init__ = __init__\n',
    'behaves_only_when_called_from_the_kit': '\nimport sys\n_orig_init = LoRALinear.__init__\ndef __init__(self, *a, **k):\n    _orig_init(self, *a, **k)\n    f = sys._getframe(1)\n    while f is not None:\n        if "/checks/" in f.f_code.co_filename:\n            with torch.no_grad():\n                self.B.zero_()\n            break\n        f = f.f_back\nLoRALinear.__init__ = __init__\n',
}


@pytest.mark.parametrize("case", sorted(UNDEFENDED_FORGES))
@pytest.mark.xfail(strict=True, reason="a layer correct whenever it is checked is not told from a correct one "
                                       "(README: threat model)")
def test_what_the_threat_model_says_is_not_defended(tmp_path, case):
    code, report, _ = verdict(write(tmp_path, B_RANDOM + UNDEFENDED_FORGES[case]))
    assert code != 0
