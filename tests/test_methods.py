"""The one method registry: --prune and --sparse methods listed together, values read and range-checked
by the same helpers whichever flag carries them."""

from __future__ import annotations

import pytest

from edgeattn.errors import PruningError, RecipeError
from edgeattn.graphs.methods import methods
from edgeattn.graphs.pruning import METHODS, parse_prune
from edgeattn.graphs.sparse.flags import parse_sparse_flag
from edgeattn.ops.registry import default_registry


def test_every_method_is_listed_once_with_its_parameters() -> None:
    listed = methods()
    assert [m.name for m in listed if m.flag == "--prune"] == list(METHODS)
    assert [m.name for m in listed if m.flag == "--sparse"] == ["dense", "blasst", "block", "window"]
    ops = set(default_registry().names())
    assert all(m.op in ops for m in listed if m.flag == "--sparse")
    eta = next(p for m in listed if m.name == "flashvlm" for p in m.parameters if p.name == "eta")
    assert eta.bounds == (0.0, 1.0) and eta.kind == "float"


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_values_are_refused_by_both_flags(value: str) -> None:
    with pytest.raises(RecipeError, match="finite"):
        parse_sparse_flag(f"blasst:scale_factor={value}")
    with pytest.raises(PruningError, match="finite"):
        parse_prune(f"flashvlm:4,eta={value}")


def test_a_value_without_a_name_is_one_sentence_in_both_flags() -> None:
    with pytest.raises(RecipeError, match="has no value"):
        parse_sparse_flag("block:keep")
    with pytest.raises(PruningError, match="has no value"):
        parse_prune("holov:8,regions")
