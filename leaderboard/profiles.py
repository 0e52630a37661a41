"""Pretraining profiles on the leaderboard: which table a checkpoint's rows are ranked in, and what each
table's profile means. The profile comes from the checkpoint's sidecar (harness.config.profile_label: "paper",
"benchmark", "quick", or "NAME (modified: KEYS)" for a run that changed a key its profile pins).

Rows of different profiles never share a table: a `paper` row trained its own published recipe, a `benchmark`
row the budget shared by every method, so ranking them together would mix method with recipe. Benchmark tables
are also one per corpus (its "same images seen" holds on one corpus). Random init has no pretraining, hence no
profile: it joins every table as its floor.
"""
from __future__ import annotations

from medssl_bench.harness.config import BENCHMARK, BENCHMARK_BUDGET

RANDOM, UNRECORDED, MODIFIED = "random", "unrecorded", "modified"
FLOOR = (RANDOM, None)  # the group of random-init rows
PROFILE_ORDER = (BENCHMARK, "paper", "imported", MODIFIED, "quick", UNRECORDED, RANDOM)  # page order: fair first
NOTES = {
    # built from harness.config's one definition of the budget
    BENCHMARK: "Every method on one budget ({arch} from ImageNet-1K weights, {image_size} px, {epochs} epochs at batch "
               "{batch_size}, on this corpus: the same images seen) with its own views, loss and paper settings. This "
               "is the ranking of methods.".format(arch=BENCHMARK_BUDGET["backbone"].replace("resnet", "ResNet-"),
                                                   **BENCHMARK_BUDGET),
    "paper": "Each method's published recipe: its own batch, epochs, image size, learning rate and initial "
             "weights. A ranking of recipes as published, not of methods at equal cost.",
    "imported": "Weights trained elsewhere and imported (e.g. a paper's release): the releaser's recipe and data.",
    MODIFIED: "Runs that changed a setting their profile pins (each row says which): custom recipes, comparable "
              "neither with their profile nor with each other in general.",
    "quick": "The CPU smoke setting: it shows the pipeline works and says nothing about the methods.",
    UNRECORDED: "Checkpoints whose record names no pretraining profile (made before profiles were recorded).",
    RANDOM: "Random initialisation only, no pretraining.",
}


def ranking_profile(checkpoint: dict | None) -> str:
    """`random`, `imported`, the sidecar's profile (`modified` for any "NAME (modified: ...)"), else
    `unrecorded`."""
    ckpt = checkpoint or {}
    if ckpt.get("method") in (RANDOM, "imported"):
        return ckpt["method"]
    label = (ckpt.get("sidecar") or {}).get("profile")
    if not isinstance(label, str) or not label:
        return UNRECORDED
    return MODIFIED if "(modified" in label else label


def ranking_group(checkpoint: dict | None) -> tuple[str, str | None]:
    """(profile, corpus id for a benchmark row, else None): the rows one table ranks together."""
    profile = ranking_profile(checkpoint)
    return profile, (checkpoint or {}).get("corpus_id") if profile == BENCHMARK else None


def group_order(group: tuple[str, str | None]) -> tuple:
    """Page order: PROFILE_ORDER; a profile name bench does not know sorts with the modified ones."""
    profile, corpus = group
    rank = PROFILE_ORDER.index(profile) if profile in PROFILE_ORDER else PROFILE_ORDER.index(MODIFIED)
    return rank, profile, corpus or ""


def note(profile: str) -> str:
    return NOTES.get(profile, f"Runs recorded under the profile '{profile}'.")
