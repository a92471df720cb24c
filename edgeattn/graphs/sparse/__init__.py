"""Sparse attention in exported graphs: `--sparse` flags, causal masks made explicit, and the
onnxruntime lowerings that compute less. See `edgeattn.graphs.sparse.api` for the entry points."""
