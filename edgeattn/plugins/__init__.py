"""The edgeattn ops: one package per op with its spec, reference, ONNX function body and kernels."""
