"""Deterministic phantom medical images for an unlabeled pretraining corpus (docs/datasets.md).

`modalities` holds one generator per image family (`f(rng, size) -> ndarray`),
`primitives` the shared drawing blocks, `corpus` the writer of the mixed-format corpus.
"""
from medssl_bench.downstream.phantoms.corpus import (
    FAMILIES, GENERATOR_VERSION, MODALITY_OF, sample_rng, synthesize_corpus,
)
from medssl_bench.downstream.phantoms.modalities import FAMILY_GENERATORS, VOLUME_GENERATORS

__all__ = [
    "FAMILIES", "FAMILY_GENERATORS", "GENERATOR_VERSION", "MODALITY_OF", "VOLUME_GENERATORS",
    "sample_rng", "synthesize_corpus",
]
