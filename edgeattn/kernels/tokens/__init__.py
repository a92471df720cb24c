"""Triton kernels of ``edgeattn.TokenScore`` and ``edgeattn.TokenSelect`` (visual-token pruning).

Semantics: ``edgeattn.ops.token_score.reference`` (sources "cls" — FasterVLM's [CLS] attention
row — and "mean_received", from Q/K or from attention probabilities, head mean/max, debias weights
and the valid mask) and ``edgeattn.ops.token_select.reference`` (modes "topk" and "regions" —
HoloV's per-chunk budgets —, ascending kept indices and the gathered tokens); ``ops`` says where
they differ.

Modules: ``scoring`` and ``selection`` (Triton only), ``ops`` (torch-facing calls), ``aot``
(ahead-of-time PTX and launch signatures for TensorRT). Nothing is imported here.
"""
