"""Batch inference: `nnship predict` streams rows from files through ONNX Runtime into files."""
