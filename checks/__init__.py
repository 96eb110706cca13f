"""lora-drill's checks: the drill's sanity checks against whichever LoRALinear the notebook defines.

In the notebook: `checks.check_1(LoRALinear)` … `checks.check_11(LoRALinear)`, `checks.run_all(LoRALinear)`.
On the command line: `python -m checks FILE` (see `python -m checks --help`).
Names are loaded on first use, so the command line can answer without importing torch.
"""
from __future__ import annotations

import importlib

_WHERE = {
    "run_all": "checks.runner", "run_one": "checks.runner", "evaluate": "checks.runner", "check": "checks.runner",
    "CheckFailed": "checks.report", "Result": "checks.report",
    "swap_in": "checks.drill", "DrillClock": "checks.drill", "test_my_checks": "checks.my_checks",
}
_NUMBERED = {f"check_{n}": n for n in range(1, 12)}

__all__ = sorted([*_WHERE, *_NUMBERED])


def _numbered(number: int):
    from checks.runner import check
    from checks.sanity import CHECKS

    def check_n(LoRALinear, **given):
        return check(number, LoRALinear, **given)
    check_n.__name__ = f"check_{number}"
    check_n.__doc__ = f"Check {number} · {CHECKS[number][0]}: prints the finding, or raises CheckFailed."
    return check_n


def __getattr__(name):
    if name in _NUMBERED:
        value = _numbered(_NUMBERED[name])
    elif name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name]), name)
    else:
        raise AttributeError(f"module 'checks' has no attribute {name!r}")
    globals()[name] = value
    return value
