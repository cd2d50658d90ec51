"""The shipped model's probabilities on the 40 full-resolution samples:

* with ``--backend torch``, byte-identical to those recorded before the restructuring
  (``scripts/record_shipped_predictions.py``, run at commit e5588e4);
* with ONNX Runtime (the default backend, on the shipped ``model.onnx``), within 1e-5 of them, with no decision
  changed at the stored operating threshold.

Both run in a subprocess with one intra-op thread, the recorder's conditions, so that the thread count of the test
process cannot change the floating-point sums."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RECORDED = REPO / "tests" / "data" / "shipped_fullres_predictions.json"
#: The largest difference allowed between the ONNX Runtime and torch probabilities (issue 18).
PARITY = 1e-5

_CODE = """
import json, sys
from pathlib import Path
from pneumoscan.inference.predictor import PACKAGED_MODEL, Predictor, RuntimeOptions
samples, backend = Path(sys.argv[1]), sys.argv[2]
if backend == "torch":
    import torch
    torch.set_num_threads(1)
files = sorted(p for p in samples.rglob("*") if p.is_file() and not p.name.startswith("."))
p = Predictor.from_checkpoint(PACKAGED_MODEL, options=RuntimeOptions(threads=1, backend=backend))
results = p.score_files(files, batch_size=16)
print(json.dumps({"threshold": p.threshold, "backend": p.backend, "torch_loaded": "torch" in sys.modules,
                  "probabilities": {str(Path(r.source).relative_to(samples)): float(r.probability).hex()
                                    for r in results}}))
"""


def _run(samples: Path, backend: str) -> dict:
    out = subprocess.run([sys.executable, "-c", _CODE, str(samples), backend], cwd=REPO, capture_output=True,
                         text=True, check=True, timeout=300).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def recorded() -> dict[str, str]:
    return json.loads(RECORDED.read_text())["probabilities"]


@pytest.mark.shared_data
def test_shipped_predictions_are_byte_identical_to_the_record_with_torch(fullres_samples, recorded):
    now = _run(fullres_samples[0].parents[1], "torch")
    assert now["backend"] == "torch"
    assert set(now["probabilities"]) == set(recorded)
    changed = {k: (float.fromhex(recorded[k]), float.fromhex(v)) for k, v in now["probabilities"].items()
               if v != recorded[k]}
    assert not changed, f"{len(changed)} of {len(recorded)} probabilities changed: {changed}"


@pytest.mark.shared_data
def test_onnx_runtime_matches_the_record_within_1e_5_and_changes_no_decision(fullres_samples, recorded):
    now = _run(fullres_samples[0].parents[1], "onnx")
    assert now["backend"] == "onnxruntime" and not now["torch_loaded"], "the ONNX path must not import torch"
    assert set(now["probabilities"]) == set(recorded)
    threshold = now["threshold"]
    worst, flipped = 0.0, []
    for name, value in now["probabilities"].items():
        onnx_p, torch_p = float.fromhex(value), float.fromhex(recorded[name])
        worst = max(worst, abs(onnx_p - torch_p))
        if (onnx_p >= threshold) != (torch_p >= threshold):
            flipped.append(name)
    assert worst <= PARITY, f"largest |ONNX - torch| is {worst:.3g}"
    assert not flipped, f"decisions changed at threshold {threshold}: {flipped}"
