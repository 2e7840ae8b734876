import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Tiny models and prompt caches go to a throwaway folder, never to the user's ~/.cache.
os.environ["GEN4D_CACHE"] = tempfile.mkdtemp(prefix="gen4d-test-cache-")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

import gen4d.testing  # noqa: E402,F401  (registers the tiny model set)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: a second worker thread costs more than it saves, and stalls on a loaded machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def restore_model_set():
    """Tests that switch ``--models`` (through the CLI) leave the registry's model set as they found it."""
    from gen4d.models import registry

    before = registry.model_set()
    yield
    registry.set_model_set(before)


@pytest.fixture
def tiny_models(restore_model_set):
    """Registry names resolve to tiny random models for the test."""
    from gen4d.models import registry

    registry.set_model_set("tiny")


@pytest.fixture(scope="session")
def t2v_dir():
    """The tiny text-to-video model (UNet3D, VAE, CLIP text encoder), the one ``--models tiny`` loads."""
    from gen4d.testing import tiny_model_dir

    return tiny_model_dir("zeroscope")
