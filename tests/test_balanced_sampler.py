"""Per-dataset shares of an epoch (harness.data.BalancedSampler, `dataset_balance` / `dataset_weights`):
quotas equal hand-computed values, every epoch draws exactly them, small datasets repeat only after a
whole pass, ranks split the epoch, and a balanced run resumed under torchrun equals an uninterrupted one."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from medssl_bench.harness.data import BalancedSampler, dataset_quotas, epoch_shares
from medssl_bench.harness.errors import UserError
from medssl_bench.harness.runs import read_run

SIZES = {"a": 1000, "b": 10, "c": 90}
GROUPS = ["a"] * 1000 + ["b"] * 10 + ["c"] * 90


def test_quotas_equal_hand_computed_shares():
    assert dataset_quotas(SIZES, 1.0, {}) == SIZES  # the natural epoch
    # alpha 0: 1100 / 3 = 366.67 each; the two remainders go to the larger datasets (a, then c)
    assert dataset_quotas(SIZES, 0.0, {}) == {"a": 367, "b": 366, "c": 367}
    # alpha 0.5, b weighted 2: masses sqrt(1000) : 2 sqrt(10) : sqrt(90) = 10 : 2 : 3, so shares of 1100 are
    # 733.33, 146.67, 220 -> 733, 146 + 1 (the largest remainder), 220
    assert dataset_quotas(SIZES, 0.5, {"b": 2}) == {"a": 733, "b": 147, "c": 220}


def test_a_run_records_its_samplers_shares_in_its_order():
    groups = ["c"] * 90 + ["a"] * 1000 + ["b"] * 10  # first seen c, a, b: the record lists them as the sampler, by name
    shares = epoch_shares([{"dataset": g} for g in groups], {"dataset_balance": 0.5, "dataset_weights": {"b": 2}})
    quotas = BalancedSampler(None, groups, alpha=0.5, weights={"b": 2}, rank=0, world_size=1).quotas
    assert list(shares.items()) == list(quotas.items()) == [("a", 733), ("b", 147), ("c", 220)]


def test_weights_naming_a_dataset_the_corpus_lacks_are_one_clear_error():
    with pytest.raises(UserError, match="does not hold: busi; it holds: a, b, c"):
        dataset_quotas(SIZES, 1.0, {"busi": 2.0})


def test_an_epoch_draws_each_share_and_small_datasets_repeat_only_after_a_whole_pass():
    sampler = BalancedSampler(None, GROUPS, seed=3, alpha=0.0, rank=0, world_size=1)
    indices = sampler.epoch_indices(5)
    assert len(indices) == len(sampler) == 1100
    groups = np.asarray(GROUPS)
    assert Counter(groups[indices]) == {"a": 367, "b": 366, "c": 367}
    seen = Counter(indices.tolist())
    # b: 366 = 36 passes of 10 + 6; c: 367 = 4 passes of 90 + 7; a under-sampled: 367 distinct images
    assert sorted(Counter(seen[i] for i in range(1000, 1010)).items()) == [(36, 4), (37, 6)]
    assert sorted(Counter(seen[i] for i in range(1010, 1100)).items()) == [(4, 83), (5, 7)]
    assert all(seen[i] == 1 for i in seen if i < 1000) and sum(i < 1000 for i in seen) == 367
    # a new subset of the large dataset, and a new order, every epoch; the same for the same (seed, epoch)
    assert set(sampler.epoch_indices(6)[:50].tolist()) != set(indices[:50].tolist())
    assert np.array_equal(BalancedSampler(None, GROUPS, seed=3, alpha=0.0, rank=0, world_size=1).epoch_indices(5),
                          indices)


def test_natural_balance_is_a_permutation_and_ranks_deal_the_epoch_by_stride():
    whole = BalancedSampler(None, GROUPS, seed=0, rank=0, world_size=1).epoch_indices(0)
    assert sorted(whole.tolist()) == list(range(1100))
    ranks = [BalancedSampler(None, GROUPS, seed=0, alpha=0.0, rank=r, world_size=3) for r in range(3)]
    for sampler in ranks:
        sampler.set_epoch(2)
    drawn = [[index for _, index in sampler] for sampler in ranks]
    assert [len(d) for d in drawn] == [367, 367, 367]  # 1100 padded to 1101 with the epoch's first index
    epoch = ranks[0].epoch_indices(2)
    assert [drawn[i % 3][i // 3] for i in range(1101)] == epoch.tolist()
    assert epoch[1100] == epoch[0] and all(e == 2 for e, _ in ranks[1])


def _all_cpus() -> None:
    try:
        os.sched_setaffinity(0, range(os.cpu_count() or 1))
    except (AttributeError, OSError):
        pass


@pytest.fixture(scope="module")
def uneven_corpus(tmp_path_factory):
    """Eight phantom datasets of 12 images each, fundus cut to 3: (workspace, corpus id)."""
    from medssl_bench.downstream.phantoms import synthesize_corpus
    from medssl_bench.harness.corpus import build_corpus
    from medssl_bench.harness.workspace import Workspace

    root = tmp_path_factory.mktemp("uneven")
    synthesize_corpus(root / "corpus", n=96, seed=0, size=32)
    for extra in sorted((root / "corpus" / "fundus").glob("*.png"))[3:]:
        extra.unlink()
    ws = Workspace(root / "workspace")
    return ws.root, build_corpus([root / "corpus"], ws).id


@pytest.mark.slow
def test_a_balanced_run_resumed_under_torchrun_equals_an_uninterrupted_one(uneven_corpus):
    workspace, corpus_id = uneven_corpus
    torchrun = [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc-per-node", "2",
                "-m", "medssl_bench.harness", "pretrain", "--workspace", str(workspace)]
    common = ["--method", "simclr", "--corpus", corpus_id, "--image-size", "32", "--batch-size", "16",
              "--epochs", "2", "--num-workers", "0", "--set", "dataset_balance=0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def run(*args):
        done = subprocess.run([*torchrun, *args], capture_output=True, text=True, timeout=600, env=env,
                              preexec_fn=_all_cpus)
        assert done.returncode == 0, done.stderr[-3000:]

    run(*common, "--name", "whole")
    run(*common, "--name", "split", "--stop-after-epoch", "1")
    run("--method", "simclr", "--name", "split", "--resume")
    runs = Path(workspace) / "runs"
    record = read_run(runs / "split")
    assert record["status"] == "done" and record["world_size"] == 2
    # 87 images, 8 datasets, alpha 0: 10.875 each -> the seven 12-image sets 11, fundus (3 images) 10
    assert record["corpus"]["epoch_shares"] == {"fundus": 10, **{d: 11 for d in
                                                ("ct", "dermoscopy", "endoscopy", "histology", "mr",
                                                 "ultrasound", "xray")}}
    whole, split = (load_file(str(runs / name / "backbone.safetensors")) for name in ("whole", "split"))
    assert all(torch.equal(whole[k], split[k]) for k in whole)
    losses = [[json.loads(line)["loss"] for line in (runs / n / "metrics.jsonl").open()] for n in ("whole", "split")]
    assert losses[0] == losses[1] and len(losses[0]) == 2 * (87 // 16)


def test_bad_balance_settings_are_one_line_each():
    from medssl_bench.harness.config import resolve_config
    from medssl_bench.methods import get_method

    simclr = get_method("simclr")
    with pytest.raises(UserError, match=r"dataset_balance must lie in \[0, 1\] .* got 2.0"):
        resolve_config(simclr, "quick", {}, {"dataset_balance": "2"})
    with pytest.raises(UserError, match="dataset_weights must be a mapping of dataset name to a positive number"):
        resolve_config(simclr, "quick", {}, {"dataset_weights": "{'ct': 0}"})
    with pytest.raises(UserError, match="dataset_weights must be a mapping"):
        resolve_config(simclr, "quick", {}, {"dataset_weights": "[1, 2]"})
    assert resolve_config(simclr, "quick", {}, {"dataset_weights": "{'ct': 2}"})["dataset_weights"] == {"ct": 2}


def test_a_label_using_method_refuses_dataset_balance_in_one_line(tmp_path, capsys):
    from medssl_bench.harness.app.cli import main

    code = main(["pretrain", "--method", "ark", "--labels-from", "phantom_ct", "--workspace", str(tmp_path / "ws"),
                 "--set", "dataset_balance=0.5", "--epochs", "1"])
    assert code == 2
    err = capsys.readouterr().err
    assert "dataset_balance / dataset_weights apply to a corpus" in err and "Traceback" not in err
    assert not (tmp_path / "ws" / "runs").exists() or not any((tmp_path / "ws" / "runs").iterdir())
