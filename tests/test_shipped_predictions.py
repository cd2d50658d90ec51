"""The shipped model's probabilities on the 40 full-resolution samples are byte-identical to those recorded
before the restructuring (``scripts/record_shipped_predictions.py``, run at commit e5588e4).

Runs in a subprocess with one torch thread, the recorder's conditions, so that the thread count of the test
process cannot change the floating-point sums."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RECORDED = REPO / "tests" / "data" / "shipped_fullres_predictions.json"


@pytest.mark.shared_data
def test_shipped_predictions_are_byte_identical_to_the_record(fullres_samples):
    samples = fullres_samples[0].parents[1]
    code = ("import json, sys; sys.path.insert(0, 'scripts'); from record_shipped_predictions import "
            f"shipped_predictions; from pathlib import Path; print(json.dumps(shipped_predictions(Path({str(samples)!r}))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True,
                         timeout=300).stdout
    now = json.loads(out.strip().splitlines()[-1])
    recorded = json.loads(RECORDED.read_text())["probabilities"]
    assert set(now) == set(recorded)
    changed = {k: (float.fromhex(recorded[k]), float.fromhex(v)) for k, v in now.items() if v != recorded[k]}
    assert not changed, f"{len(changed)} of {len(now)} probabilities changed: {changed}"
