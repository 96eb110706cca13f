"""The mistake catalogue for the kit's own tests: checks/catalogue.py's broken layers, derived from the reference.

Each name is importable from here (`from tests.mistakes import BRandomInit`), and CAUGHT_BY maps it to the check
that must fail first on it. Broken layers written from scratch by people who had not seen the catalogue live in
tests/outsider_layers.py.
"""
from __future__ import annotations

from checks.catalogue import mistakes
from solution import LoRALinear

ENTRIES = mistakes(LoRALinear)
CAUGHT_BY: dict[str, int] = {e.name: e.check for e in ENTRIES}  # class name -> the check that must fail first
globals().update({e.name: e.cls for e in ENTRIES})
