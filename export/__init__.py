"""ONNX export, parity verification, optimization variants, benchmark, model package and store."""
