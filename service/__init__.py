"""Serving: ONNX Runtime inference runtime, validation, the BentoML service, metrics, security, batch jobs."""
