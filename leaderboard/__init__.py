"""The static HTML leaderboard, generated from the results store only (`bench leaderboard`)."""
from medssl_bench.leaderboard.build import build_leaderboard

__all__ = ["build_leaderboard"]
