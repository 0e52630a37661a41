"""How LVM-Med cuts a process's batch into graph-matching instances of `graph_size` images.

b = q·n + r images (n = graph_size): q groups of n consecutive images, and when r > 0 one more group of
the last n images, which overlaps the one before it by n - r images. Every image is matched, every
instance has n nodes (the paper's 16), so all instances solve in one batched call. The n - r overlapping
images are matched twice in that step; the batch is shuffled, so over a run each image is equally likely
to be among them. Why not a smaller group or cross-process groups: docs/lvmmed.md, "Groups".
Which views are matched (`view_pairs`): each pair's instances are one more batch of groups.
"""
from __future__ import annotations

import torch


def group_index(batch: int, graph_size: int) -> torch.Tensor:
    """(groups, graph_size) batch positions of each matching instance; batch >= graph_size."""
    if batch < graph_size:
        raise ValueError(f"a batch of {batch} images holds no group of {graph_size}")
    starts = list(range(0, batch - graph_size + 1, graph_size))
    if batch % graph_size:
        starts.append(batch - graph_size)  # the remainder, completed with the tail of the previous group
    return torch.tensor(starts)[:, None] + torch.arange(graph_size)


def layout(batch: int, graph_size: int) -> tuple[int, int]:
    """(instances per step, images matched twice per step) for a batch of `batch` images per process."""
    groups = -(-batch // graph_size)
    return groups, groups * graph_size - batch


def view_pairs(n_views: int) -> list[tuple[int, int]]:
    """The matched (s, t) view pairs: the global views, then local crop k with global view k mod 2 (ours: the
    paper matches two views; DINO and SwAV likewise compare local crops with global views only)."""
    return [(0, 1)] + [(2 + k, k % 2) for k in range(n_views - 2)]
