"""The service reads model packages through the bottom layer only: importing it never imports
torch, the exporter or the training code."""

import os
import subprocess
import sys

CHECK = """
import sys
import nnship.service.service, nnship.service.cli, nnship.service.lifecycle
import nnship.service.validation
loaded = [m for m in sys.modules if m == "torch" or m.startswith(("torch.", "nnship.export",
          "nnship.training"))]
print(" ".join(sorted(loaded)))
"""


def test_importing_the_service_imports_neither_torch_nor_export_nor_training(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("NNSHIP_")}
    env.update(NNSHIP_MODEL="some-model:1", BENTOML_HOME=str(tmp_path), BENTOML_DO_NOT_TRACK="true")
    proc = subprocess.run(
        [sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=180, env=env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "", f"the service imported: {proc.stdout.strip()}"
