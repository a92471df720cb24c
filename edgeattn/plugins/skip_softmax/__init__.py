"""``edgeattn.SkipSoftmaxAttention`` (BLASST): reference, Triton kernels, torch wrapper, AOT builds.

Modules: ``reference`` (torch only), ``kernel`` (Triton only), ``ops`` (torch-facing calls),
``aot`` (ahead-of-time PTX for TensorRT). Nothing is imported here, so importing the package needs
neither torch nor triton.
"""
