"""BatchNorm running statistics re-estimated from chosen inputs (Precise-BN, Wu & Johnson 2021, "Rethinking
'Batch' in BatchNorm"): used where training inputs are not what the exported network will see (Models Genesis
trains on distorted images and is evaluated on clean ones)."""
from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn


@torch.no_grad()
def recalibrate_batchnorm(net: nn.Module, forward: Callable[[torch.Tensor], object],
                          batches: Iterable[torch.Tensor]) -> int:
    """Every BatchNorm of `net` gets, as running mean/var, the plain average over `batches` of its batch mean and
    (unbiased) batch variance (momentum None: a cumulative average), measured in train mode without gradients.
    Statistics are reset only once a first batch arrives, so no batches leave them as they were. Returns the count."""
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta, training, count = [m.momentum for m in norms], net.training, 0
    net.train()
    try:
        for x in batches:
            if count == 0:
                for m in norms:
                    m.reset_running_stats()
                    m.momentum = None
            forward(x)
            count += 1
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        net.train(training)
    return count
