"""Hostile inputs through the real CLI: exit code 1, one line, no traceback, nothing lost or escaped.

The cases are data in tests/bad_inputs/cases_*.py; each module exports CASES, a list of `Case`.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

import pytest

import bad_inputs
from bad_inputs.harness import Case, run_case


def _all_cases() -> list[Case]:
    cases: list[Case] = []
    for module in pkgutil.iter_modules(bad_inputs.__path__):
        if module.name.startswith("cases_"):
            cases.extend(importlib.import_module(f"bad_inputs.{module.name}").CASES)
    return cases


CASES = _all_cases()


def test_the_catalogue_is_large_and_names_are_unique() -> None:
    names = [case.name for case in CASES]
    assert len(names) == len(set(names)), "duplicate case names"
    assert len(CASES) >= 40


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_hostile_input_ends_in_one_line(case: Case, tmp_path: Path) -> None:
    run_case(case, tmp_path)
