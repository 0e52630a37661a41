"""The top floor: orchestration (pretrain, evaluate, sweep, labelled data) and the `bench` CLI.

Only this package may import methods/, downstream/ and leaderboard/ (tests/test_layers.py).
"""
