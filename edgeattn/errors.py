"""User errors. The CLI prints their message on one line and exits 1; anything else is a bug."""

from __future__ import annotations


class EdgeAttnError(Exception):
    """Root of every error caused by what the user asked for (bad path, bad name, bad value)."""


class ModelSourceError(EdgeAttnError):
    """A MODEL argument that cannot be loaded: missing path, unknown name, unsupported family."""


class ExportError(EdgeAttnError):
    """Export to ONNX failed or produced a graph that breaks a promise (e.g. a lost dynamic axis)."""


class ValidationError(ExportError):
    """An exported component disagrees with PyTorch beyond the tolerance for its dtype."""


class GraphError(EdgeAttnError):
    """An ONNX file that cannot be read, rewritten or lowered as asked."""


class RecipeError(EdgeAttnError):
    """A recipe file or flag with unknown keys, bad ranges or selections that match nothing."""


class RuntimeUnavailableError(EdgeAttnError):
    """An optional runtime (TensorRT, Triton, a GPU) that the asked-for operation needs is missing."""


class PruningError(GraphError):
    """A pruning method, budget or parameter that does not fit the vision graph it is applied to."""
