"""Triton kernels of ``edgeattn.BlockSparseAttention`` and ``edgeattn.BlockSelect``.

The semantics are those of the registry references, ``edgeattn.ops.block_select.reference``
(block geometry, pooled scores, topk / threshold / cumprob selection with forced local, sink and
dense-row blocks) and ``edgeattn.ops.block_sparse_attention.reference`` (attention over the
kept blocks or a window + sinks layout, Rectified SpaAttn correction); ``ops`` says where they differ.

Modules: ``attention`` and ``selection`` (Triton only), ``config`` (launch settings, plain Python),
``blocks`` (geometry and block lists, torch only), ``ops`` (torch-facing calls), ``aot``
(ahead-of-time PTX and launch signatures for TensorRT).
Nothing is imported here, so importing the package needs neither torch nor triton, and
``benchmarks/gpu_attention.py`` can load ``ops`` on a machine with only torch and triton.
"""
