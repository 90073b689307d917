import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))   # tests import reference_impl and helpers


@pytest.fixture(autouse=True)
def _two_threads():
    torch.set_num_threads(2)
