"""Detection through mmdetection: `run` (the family runner), `model`, `metrics`."""
