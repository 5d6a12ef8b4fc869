import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))  # tests/oracle.py is shared by the test modules

HAS_CUDA = torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device; the CPU path of the same logic is tested separately")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
