"""Which files `grade` grades, and the private snapshot they are graded from."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

GRADABLE = (".ipynb", ".py")


class UsageError(Exception):
    """The command was given something it cannot grade at all (exit code 2), as opposed to a failing file."""


def collect(paths) -> list[Path]:
    """The .ipynb and .py files named, or found under the folders named (hidden folders skipped), in order."""
    found: dict[Path, Path] = {}
    for given in map(Path, paths):
        if given.is_dir():
            inside = sorted(p for p in given.rglob("*") if p.suffix in GRADABLE and p.is_file()
                            and not any(part.startswith(".") for part in p.relative_to(given).parts))
            if not inside:
                raise UsageError(f"{given} holds no .ipynb or .py file to grade")
            files = inside
        elif given.is_file():
            if given.suffix not in GRADABLE:
                raise UsageError(f"{given} is neither a notebook (.ipynb) nor a .py file; "
                                 "pass learners' notebooks, .py files, or folders that hold them")
            files = [given]
        else:
            raise UsageError(f"{given} does not exist; check the path")
        for f in files:
            found.setdefault(f.resolve(), f)
    return list(found.values())


def snapshot(files: list[Path]) -> tuple[str, list[Path | None]]:
    """Copy every file, before anything runs, into a new private folder (mode 0700), each in a folder of its own
    and read-only: (the folder, each file's copy, or None where it could not be read)."""
    folder = tempfile.mkdtemp(prefix="lora-drill-grade-")
    copies: list[Path | None] = []
    for i, f in enumerate(files):
        own = Path(folder, f"{i:04d}")
        own.mkdir()
        copy = own / f.name
        try:
            shutil.copyfile(f, copy)
            os.chmod(copy, 0o444)
        except OSError:
            copy = None
        copies.append(copy)
    return folder, copies
