"""Which device a computation runs on: one rule for evaluation, sweeps and benchmarks."""
from __future__ import annotations


def default_device():
    """The first CUDA GPU when there is one, else the CPU (a torch.device; torch imported on call)."""
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
