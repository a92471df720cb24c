"""The edgeattn ops: one package per op with all its faces (declaration, reference, ONNX function body,
onnxruntime lowering, TensorRT form) and the kernels it names (under edgeattn.kernels)."""
