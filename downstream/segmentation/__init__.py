"""2D and 3D segmentation through mmsegmentation: `run` (the family runner), `model`, `metrics`."""
