"""Containment for `grade`: bubblewrap around each submission's worker, and a clean end to every process.

With bwrap (Linux; a Debian package, unprivileged where user namespaces are allowed), a submission's worker sees:
  * read-only: the system's /usr and /etc, this Python (its prefixes and site-packages), and the kit's checks/
    but its judge (checks/judge.py and its compiled forms, which the worker never loads, are /dev/null there,
    which cannot even be opened);
  * its own empty, writable /tmp and working folder, holding only a read-only copy of its own file;
  * nothing else: not the original submissions, not the other submissions, not the reports, not the kit's
    solution/ or tests/; no network (`--unshare-all`); its own PID namespace, so it cannot signal the grader or
    any other process, and every process it starts dies with it (`--die-with-parent`); a new session
    (`--new-session`), so it cannot push keystrokes into the grader's terminal.
Without a sandbox (`--sandbox none`), the grader becomes a child subreaper (Linux), so processes a submission
leaves behind become its children; each worker's process group is killed when it ends, and `sweep()` kills
every leftover before the reports are written.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from checks import guard

SANDBOXES = ("auto", "bwrap", "none")
WORKDIR = "/submission"  # where a submission's copy sits inside the sandbox


def _python_dirs() -> list[str]:
    """This interpreter's prefixes and the site-packages and stdlib folders on its path (never the current folder)."""
    dirs = {sys.prefix, sys.base_prefix, sys.exec_prefix}
    for entry in sys.path:
        if entry and os.path.isabs(entry) and os.path.isdir(entry) and (
                "site-packages" in entry or "dist-packages" in entry or entry.startswith(sys.base_prefix)):
            dirs.add(entry)
    real = {os.path.realpath(sys.executable), sys.executable}
    dirs |= {os.path.dirname(p) for p in real}
    return sorted(d for d in dirs if d and os.path.isdir(d))


def bwrap_prefix(kit_root: str, file_copy: Path) -> list[str]:
    """The bwrap command line that runs a worker for `file_copy`, which appears at WORKDIR/<its name>."""
    # The private /tmp first: binds made after it stay visible, so a Python or a kit that lives under /tmp (a CI
    # clone, a virtual environment made there) is still found inside the sandbox.
    args = ["bwrap", "--unshare-all", "--die-with-parent", "--new-session", "--tmpfs", "/tmp"]
    for top in ("/usr", "/etc", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    for d in _python_dirs():
        if not d.startswith(("/usr/", "/etc/")):
            args += ["--ro-bind", d, d]
    checks_dir = os.path.join(kit_root, "checks")
    args += ["--ro-bind", checks_dir, checks_dir]
    for hidden in guard.hidden_files(kit_root):
        if os.path.exists(hidden):
            args += ["--ro-bind", "/dev/null", hidden]
    args += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", WORKDIR,
             "--ro-bind", str(file_copy), f"{WORKDIR}/{file_copy.name}",
             "--chdir", WORKDIR, "--setenv", "HOME", "/tmp", "--setenv", "TMPDIR", "/tmp", "--"]
    return args


def usable(kit_root: str) -> str:
    """"" when bwrap runs this Python with the kit inside the sandbox; else why not."""
    if not shutil.which("bwrap"):
        return "bwrap is not installed (Debian/Ubuntu: apt-get install bubblewrap)"
    scratch = Path(os.environ.get("TMPDIR", "/tmp"))
    probe = scratch / f".lora-drill-probe-{os.getpid()}.py"
    try:
        probe.write_text("", encoding="utf-8")
        command = bwrap_prefix(kit_root, probe) + [
            sys.executable, "-I", "-c", "import sys; sys.path.insert(0, sys.argv[1]); import checks.channel",
            kit_root]
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"bwrap could not start: {exc}"
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()
    if done.returncode != 0:
        return f"bwrap cannot run here: {(done.stderr.strip().splitlines() or ['exit code ' + str(done.returncode)])[-1]}"
    return ""


def choose(asked: str, kit_root: str) -> tuple[str, str]:
    """(the sandbox to use, why bwrap is not used) for --sandbox `asked`; ("", why) when bwrap was asked for and
    cannot run."""
    if asked == "none":
        return "none", "--sandbox none"
    problem = usable(kit_root)
    if not problem:
        return "bwrap", ""
    return ("", problem) if asked == "bwrap" else ("none", problem)


# ------------------------------------------------------------------------------------------ ending processes


PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> bool:
    """Make this process adopt orphaned descendants (Linux); False where that is not possible."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def kill_group(pid: int) -> None:
    """SIGKILL the process group that `pid` leads (each worker starts a session of its own)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _children(of: int) -> list[int]:
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as f:
                    stat = f.read()
            except OSError:
                continue
            fields = stat[stat.rfind(b")") + 2:].split()
            if len(fields) > 1 and int(fields[1]) == of:
                found.append(int(entry.name))
    return found


def sweep(keep=()) -> int:
    """Kill and reap every child of this process but `keep` (as a subreaper, the orphans a submission left),
    until none is left; returns how many were killed."""
    if not os.path.isdir("/proc"):
        return 0
    killed = 0
    for _ in range(50):
        victims = [pid for pid in _children(os.getpid()) if pid not in keep]
        if not victims:
            break
        for pid in victims:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
                killed += 1
        for pid in victims:
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, 0)
    return killed
