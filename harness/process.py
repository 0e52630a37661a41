"""Process-wide settings. Entry points apply them (the `bench` command, `python -m medssl_bench.harness`,
benchmark scripts, the test session); importing a module never does."""
from __future__ import annotations

import os
import warnings


def configure_process() -> None:
    # Idle OpenMP threads sleep instead of spinning. With spinning threads, a busy core (a data-
    # loading worker, another job) slows a 2-thread CPU step ~8x (measured: ResNet-18 step 3.2 s vs
    # 0.42 s). Must be set before torch loads its OpenMP runtime; the user's own setting wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # Third-party deprecation notices (lightly's DINO head uses the old weight_norm, its VICRegL
    # crop the old get_image_size) are not the user's business.
    warnings.filterwarnings("ignore", message=".*weight_norm is deprecated.*")
    warnings.filterwarnings("ignore", message=".*get_image_size.*is deprecated.*")
