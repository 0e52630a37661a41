"""Shared machinery of `bench`: CLI, configuration, run directories, provenance, training glue."""

import os

# Idle OpenMP threads sleep instead of spinning. With spinning threads, a busy core (a data-
# loading worker, another job) slows a 2-thread CPU step ~8x (measured: ResNet-18 step 3.2 s vs
# 0.42 s). Must be set before torch loads its OpenMP runtime; the user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
