"""``edgeattn.SkipSoftmaxAttention`` (BLASST): reference, Triton kernels, torch wrapper, AOT builds.

Modules: ``reference`` (torch only), ``kernel`` (Triton only), ``config`` (launch settings, plain
Python), ``ops`` (torch-facing calls), ``aot`` (ahead-of-time PTX and launch signatures for
TensorRT). Nothing is imported here, so importing the package needs neither torch nor triton.
"""
