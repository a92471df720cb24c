"""onnxruntime sessions, generation loops and (optional) TensorRT engines."""
