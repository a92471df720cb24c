"""ONNX in memory (onnx-ir): load/save, attention-site rules, rewrite pipeline, lowerings, reports."""
