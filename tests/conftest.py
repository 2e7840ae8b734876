import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Tiny models and prompt caches go to a throwaway folder, never to the user's ~/.cache.
os.environ["GEN4D_CACHE"] = tempfile.mkdtemp(prefix="gen4d-test-cache-")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
