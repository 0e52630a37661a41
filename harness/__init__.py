"""The ground floor of `bench`: errors, files, workspace, provenance, image decoding, corpus,
configuration, the training engine, checkpoints and the results store.

Nothing here imports `methods`, `downstream`, `leaderboard` or the top floor `harness.app`
(tests/test_layers.py). Process-wide settings belong to the entry point (`harness.app.cli.run`).
"""

__version__ = "0.1.0"
