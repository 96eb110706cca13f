"""lora_mock.ipynb executed end to end: as shipped, with a learner's correct layer, with a broken one, and as
Colab would see it (the notebook alone, in an empty folder, in a fresh environment without the kit)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sysconfig
import venv
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from tests.conftest import ROOT
from tests.test_cli import B_RANDOM, CORRECT

NOTEBOOK = ROOT / "lora_mock.ipynb"


def with_stub(source: str | None = None):
    """The shipped notebook, its stub cell replaced by `source` when given."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    if source is not None:
        stub = next(c for c in nb.cells if "lora-stub" in c.metadata.get("tags", []))
        stub.source = source
    return nb


def execute(nb, monkeypatch):
    """Run the notebook in a fresh kernel as a learner would: the instructor swap off."""
    monkeypatch.delenv("LORA_DRILL_SOLUTION", raising=False)  # the kernel inherits this process's environment
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()


def error_cell(nb):
    return next(c for c in nb.cells if any(o.output_type == "error" for o in c.get("outputs", [])))


def test_shipped_notebook_stops_at_the_stub(monkeypatch):
    nb = with_stub()
    with pytest.raises(CellExecutionError) as raised:
        execute(nb, monkeypatch)
    assert raised.value.ename == "NotImplementedError"
    assert "toy-task" in error_cell(nb).metadata.get("tags", [])  # the first cell that builds a layer


MY_CHECKS = """
def b_starts_at_zero(LoRALinear):
    assert torch.all(LoRALinear(16, 8).B == 0)


def shapes(LoRALinear):
    layer = LoRALinear(10, 6, r=2)
    assert layer.A.shape == (2, 10) and layer.B.shape == (6, 2)


mine = checks.test_my_checks(b_starts_at_zero, shapes, base=LoRALinear)
mine
"""


def test_a_learners_correct_layer_runs_clean(monkeypatch):
    nb = with_stub(CORRECT)
    next(c for c in nb.cells if c.get("id") == "part4-mine").source = MY_CHECKS  # the learner writes two checks
    nb.cells.append(nbformat.v4.new_code_cell("import sys; print('torch._dynamo' in sys.modules)"))
    execute(nb, monkeypatch)
    summary = next(c for c in nb.cells if c.source.strip() == "checks.run_all(LoRALinear)")
    assert "11 of 11 checks passed." in summary.outputs[0].text
    closing = next(c for c in nb.cells if c.get("id") == "summary").outputs[0].data["text/plain"]
    assert "2 written; caught 2 of" in closing and "0 false alarm(s)" in closing and "11 of 11 passed" in closing
    # torch.optim's first step imports torch._dynamo (1.5 s, the notebook's largest single cost): neither the toy
    # loop nor the checks nor the lab may pay it.
    assert nb.cells[-1].outputs[0].text.strip() == "False"


def test_a_broken_layer_stops_at_the_check_that_catches_it(monkeypatch):
    nb = with_stub(B_RANDOM)
    with pytest.raises(CellExecutionError) as raised:
        execute(nb, monkeypatch)
    assert raised.value.ename == "CheckFailed"
    assert error_cell(nb).source.strip() == "checks.check_2(LoRALinear)"
    assert "B is not zero" in raised.value.evalue


# The paper's init taken literally (§4.1: A random Gaussian, B zero), A ~ N(0, 1) with no scaling down: correct, and
# large enough that plain gradient descent at the toy's old learning rate went to NaN.
PAPER_LITERAL_INIT = CORRECT.replace("torch.randn(r, in_features) / r", "torch.randn(r, in_features)")


def test_the_papers_literal_init_runs_clean_and_the_toy_learns(monkeypatch):
    assert PAPER_LITERAL_INIT != CORRECT
    nb = with_stub(PAPER_LITERAL_INIT)
    nb.cells.append(nbformat.v4.new_code_cell("print(losses[-1] / losses[0])"))
    execute(nb, monkeypatch)  # raises on any cell's error
    texts = [o.get("text", "") + str(o.get("data", {}).get("text/plain", ""))
             for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [t for t in texts if re.search(r"\bnan\b", t, re.IGNORECASE)], "a NaN in the outputs"
    assert float(nb.cells[-1].outputs[0].text) < 0.05  # the toy loss ends below 5% of its start


def _environment_without_the_kit(where: Path) -> Path:
    """A fresh venv that sees this environment's packages (torch, ipykernel, …) but not lora-drill itself.

    Installing torch again would cost minutes, so the venv gets a folder of links to this environment's
    site-packages, minus everything the lora-drill distribution installed."""
    venv.EnvBuilder(with_pip=True).create(where / "venv")
    python = where / "venv" / "bin" / "python"
    shared = where / "shared-site-packages"
    shared.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        ours = "lora_drill" in entry.name.lower().replace("-", "_") or entry.name in ("checks", "solution")
        if not ours and entry.suffix != ".pth":  # .pth: an editable install's path hook among them
            (shared / entry.name).symlink_to(entry)
    target = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                            capture_output=True, text=True, check=True).stdout.strip()
    Path(target, "shared.pth").write_text(f"{shared}\n")
    return python


RUN_NOTEBOOK = """
import sys, nbformat
from nbclient import NotebookClient
nb = nbformat.read(sys.argv[1], as_version=4)
NotebookClient(nb, timeout=600, kernel_name="python3").execute()
summary = next(c for c in nb.cells if c.source.strip() == "checks.run_all(LoRALinear)")
print(summary.outputs[0].text)
"""


def test_colab_path_installs_the_kit_from_the_marked_source(tmp_path):
    python = _environment_without_the_kit(tmp_path)
    plain = subprocess.run([python, "-c", "import checks"], cwd=tmp_path, capture_output=True, text=True)
    assert plain.returncode != 0, "the fresh environment must not see the kit before the notebook installs it"
    # The install source: a copy of this checkout, as Colab would fetch the repository.
    source = tmp_path / "kit"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", ".venv", "*.egg-info", "__pycache__", "build"))
    alone = tmp_path / "upload"  # Colab: the notebook alone, nothing beside it
    alone.mkdir()
    shutil.copy(NOTEBOOK, alone / NOTEBOOK.name)
    env = {**os.environ, "LORA_DRILL_SOURCE": str(source), "LORA_DRILL_SOLUTION": "1",
           "JUPYTER_PATH": str(tmp_path / "no-kernelspecs"), "PYTHONPATH": ""}
    done = subprocess.run([python, "-c", RUN_NOTEBOOK, NOTEBOOK.name], cwd=alone, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "11 of 11 checks passed." in done.stdout
    assert sorted(p.name for p in alone.iterdir()) == [NOTEBOOK.name]
    installed = subprocess.run([python, "-c", "import checks; print(checks.__file__)"], cwd=tmp_path,
                               capture_output=True, text=True)
    assert str(tmp_path / "venv") in installed.stdout  # installed into the fresh environment, not found elsewhere
