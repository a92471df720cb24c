"""Triton kernels by family, each with its float64 reference, AOT builds per compute capability and one
plain launch function. Importable without onnx-ir (and without Triton until a kernel is launched).

| family | kernels | serves the op |
|---|---|---|
| `skip_softmax` | flash attention with skip-softmax (BLASST) tiles, prefill and split-K decode | `SkipSoftmaxAttention` |
| `block_sparse` | block scoring/selection and block-sparse flash attention | `BlockSelect`, `BlockSparseAttention` |
| `tokens` | token scoring ([CLS] row, mean received) and top-k selection | `TokenScore`, `TokenSelect` |
"""
