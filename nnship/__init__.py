"""nnship: from a trained PyTorch network to a served ONNX model."""

__version__ = "0.1.0"
