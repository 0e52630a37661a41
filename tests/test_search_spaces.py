"""Every method declares what `bench sweep` may tune, next to its code, with the paper's values inside."""
from __future__ import annotations

import pytest
from optuna.distributions import BaseDistribution, CategoricalDistribution

from medssl_bench.harness.config import resolve_config, section_defaults
from medssl_bench.methods import METHOD_NAMES, get_method


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_search_space_names_real_settings_and_contains_the_paper_values(name):
    method = get_method(name)
    assert method.search_space, f"{name} declares no search space"
    paper = resolve_config(method, "paper", {}, {})
    for key, dist in method.search_space.items():
        assert isinstance(dist, BaseDistribution), key
        # a key of any section: train (harness.config.TRAIN_DEFAULTS), model (constructor) or views
        assert any(key in section for section in section_defaults(method).values()), f"{name}: '{key}' is not a setting"
        value = paper[key]
        if isinstance(dist, CategoricalDistribution):
            assert value in dist.choices, (name, key, value, dist.choices)
        else:
            assert dist.low <= value <= dist.high, (name, key, value, dist)
