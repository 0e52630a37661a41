"""torch >= 2.6 loads checkpoints with `weights_only=True`; mmengine 0.10.7's own checkpoints
hold a few non-tensor types: its message hub's HistoryBuffer (whose statistics methods pickle
through `getattr`), numpy arrays, dtypes and scalars.

We allow exactly those types, and only while the Runner resumes from the run's *own* mmengine
checkpoint (`trusted_mmengine_checkpoint`), instead of turning the safety off for the process
(TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD would also unpickle untrusted external checkpoints). External
weights are only ever read with safetensors or `weights_only=True`.
"""
from __future__ import annotations

import builtins
import contextlib
from typing import Iterator


def mmengine_checkpoint_globals() -> list:
    import numpy as np
    from mmengine.logging.history_buffer import HistoryBuffer

    dtype_classes = [type(np.dtype(name)) for name in
                     ("float64", "float32", "float16", "int64", "int32", "uint8", "bool", "uint32")]
    return [HistoryBuffer, builtins.getattr, np.ndarray, np.dtype, np._core.multiarray._reconstruct,
            np._core.multiarray.scalar, *dtype_classes]


@contextlib.contextmanager
def trusted_mmengine_checkpoint() -> Iterator[None]:
    import torch

    with torch.serialization.safe_globals(mmengine_checkpoint_globals()):
        yield
