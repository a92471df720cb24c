"""torch -> ONNX: model sources, one module per family, dynamo capture, parity validation."""
