"""nnship: from a trained PyTorch network to a served ONNX model."""

__version__ = "0.1.0"

from pathlib import Path as _Path

# Run from the source tree without installation (a Bento's src folder), the stage folders beside
# this one are nnship's subpackages: nnship.service is ../service. Installed, nothing changes.
_root = _Path(__file__).resolve().parent.parent
if not (_root / "nnship" / "service").is_dir() and (_root / "service" / "service.py").is_file():
    __path__.append(str(_root))
