"""LVM-Med: graphs, affinities, the IMLE gradient, and ablation switches that change only what they name."""
from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from medssl_bench.harness.backbones import build_backbone
from medssl_bench.harness.config import build_transform, method_kwargs, resolve_config
from medssl_bench.harness.errors import UserError
from medssl_bench.harness.method_api import StepInfo
from medssl_bench.methods.blocks.graph_matching import edge_indicator, solve_lap
from medssl_bench.methods.blocks.imle import hamming, imle_hamming_matching
from medssl_bench.methods.lvmmed import LVMMed
from medssl_bench.methods.blocks.lvmmed_graph import edge_affinity, gcn_adjacency, knn_edges, local_affinity, vertex_affinity


# ---------------------------------------------------------------- graphs and affinities, by hand
def test_knn_edges_pick_the_nearest_other_nodes():
    z = torch.tensor([[[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]]])
    edges = knn_edges(z, k=1)
    assert edges.tolist() == [[[0, 1], [1, 0], [2, 3], [3, 2]]]
    assert knn_edges(torch.randn(3, 16, 8), k=5).shape == (3, 80, 2)


def test_gcn_adjacency_is_symmetric_normalised_with_self_loops():
    edges = torch.tensor([[[0, 1], [1, 2]]])  # path 0-1-2 once made undirected
    adj = gcn_adjacency(edges, 3)[0]
    degree = torch.tensor([2.0, 3.0, 2.0])  # with self loops
    expected = torch.tensor([[1, 1, 0], [1, 1, 1], [0, 1, 1]]) / (degree[:, None] * degree[None, :]).sqrt()
    torch.testing.assert_close(adj, expected)


def test_edge_affinity_is_cosine_of_embedding_differences():
    z_s = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]]])
    z_t = torch.tensor([[[0.0, 0.0], [0.0, 3.0], [1.0, 1.0]]])
    e_s, e_t = torch.tensor([[[0, 1], [0, 2]]]), torch.tensor([[[0, 1], [2, 0]]])
    c = edge_affinity(z_s, z_t, e_s, e_t)[0]
    # s-differences: (-1,0), (0,-2); t-differences: (0,-3), (1,1)
    expected = torch.tensor([[0.0, -1 / 2 ** 0.5], [1.0, -1 / 2 ** 0.5]])
    torch.testing.assert_close(c, expected)


def test_local_affinity_matches_cells_by_location_and_by_feature():
    # one group, one image per view, two cells each. View t is view s flipped: cell 0 of s sits where cell 1 of t sits.
    maps_s = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])  # (G=1, N=1, P=2, D=2)
    maps_t = torch.tensor([[[[0.0, 2.0], [3.0, 0.0]]]])
    grid_s = torch.tensor([[[[0.25, 0.5], [0.75, 0.5]]]])
    grid_t = torch.tensor([[[[0.75, 0.5], [0.25, 0.5]]]])
    s_to_t, t_to_s = local_affinity(maps_s, maps_t, grid_s, grid_t, gamma=2)
    # location partners: s0<->t1, s1<->t0, cos = 1 each; feature partners (L2) are the same cells -> 1.
    assert s_to_t.item() == pytest.approx(1.0) and t_to_s.item() == pytest.approx(1.0)
    # move t's cells so that location says s0<->t0 (cos 0) while features still say s0<->t1 (cos 1)
    s_to_t, _ = local_affinity(maps_s, maps_t, grid_s, grid_s.clone(), gamma=2)
    assert s_to_t.item() == pytest.approx(0.5 * (0.0 + 1.0))


def test_local_affinity_keeps_only_the_gamma_closest_location_pairs():
    maps_s = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    maps_t = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])
    grid_s = torch.tensor([[[[0.0, 0.0], [1.0, 1.0]]]])
    grid_t = torch.tensor([[[[0.0, 0.0], [0.9, 0.9]]]])  # s0 matches exactly (cos 1), s1 is farther (cos 0)
    s_to_t, _ = local_affinity(maps_s, maps_t, grid_s, grid_t, gamma=1)
    # location side keeps s0 only -> 1; feature side keeps the best-L2 pair, s0 -> 1
    assert s_to_t.item() == pytest.approx(1.0)
    s_to_t_all, _ = local_affinity(maps_s, maps_t, grid_s, grid_t, gamma=2)
    assert s_to_t_all.item() == pytest.approx(0.5 * (0.5 + 0.5))


def test_vertex_affinity_mixes_global_and_both_local_directions():
    z_s, z_t = torch.randn(1, 4, 8), torch.randn(1, 4, 8)
    local = (torch.rand(1, 4, 4), torch.rand(1, 4, 4))
    glob = F.normalize(z_s, dim=-1) @ F.normalize(z_t, dim=-1).transpose(1, 2)
    torch.testing.assert_close(vertex_affinity(z_s, z_t, local, 0.8), 0.8 * glob + 0.2 * (local[0] + local[1]))
    torch.testing.assert_close(vertex_affinity(z_s, z_t, local, 0.8, symmetric_local=False), 0.8 * glob + 0.2 * local[0])
    torch.testing.assert_close(vertex_affinity(z_s, z_t, None, 0.8), glob)


# ---------------------------------------------------------------- IMLE gradient
def lap(u, *_):
    return solve_lap(u)


def test_imle_gradient_with_large_lambda_is_difference_to_gold():
    torch.manual_seed(0)
    unary = torch.randn(3, 5, 5, requires_grad=True)
    zeros = torch.zeros(3, 5, 5)
    loss, v = imle_hamming_matching(unary, None, zeros, None, 1e4, lap)
    loss.sum().backward()
    gold = torch.eye(5).expand(3, 5, 5)
    torch.testing.assert_close(unary.grad, (v - gold) / 1e4)
    torch.testing.assert_close(loss, hamming(v, gold))


def test_imle_gradient_reaches_edge_costs_through_paid_edges():
    torch.manual_seed(1)
    n = 4
    edges = torch.tensor([[[i, (i + 1) % n] for i in range(n)]])
    unary = torch.randn(1, n, n, requires_grad=True)
    edge = torch.randn(1, n, n, requires_grad=True)

    def brute(u, e, *_):  # exact QAP on 4 nodes
        best, best_v = None, None
        for perm in itertools.permutations(range(n)):
            v = torch.zeros(1, n, n)
            v[0, torch.arange(n), torch.tensor(perm)] = 1
            score = (u * v).sum() + (e * edge_indicator(v, edges, edges)).sum()
            if best is None or score > best:
                best, best_v = score, v
        return best_v

    edges_of = lambda v: edge_indicator(v, edges, edges)  # noqa: E731
    loss, v = imle_hamming_matching(unary, edge, torch.zeros(1, n, n), torch.zeros(1, n, n), 500.0, brute, edges, edges)
    loss.sum().backward()
    gold = torch.eye(n)[None]
    torch.testing.assert_close(edge.grad, (edges_of(v) - edges_of(gold)) / 500.0)


@pytest.mark.parametrize("convention,lam", [("per_instance", 5.0), ("batch_mean", 5.0 * 400)])
def test_a_step_against_the_imle_gradient_lowers_the_expected_hamming_loss(convention, lam):
    torch.manual_seed(2)
    n, samples = 6, 400
    unary = torch.randn(1, n, n).repeat(samples, 1, 1)
    noise = -torch.log(-torch.log(torch.rand(samples, n, n).clamp(1e-9, 1 - 1e-9)))  # common random numbers

    def expected_loss(u):
        return hamming(solve_lap(u + noise), torch.eye(n).expand(samples, n, n)).mean()

    theta = unary[:1].clone().requires_grad_(True)
    loss, _ = imle_hamming_matching(theta.expand(samples, n, n), None, noise, None, lam, lap, convention=convention)
    loss.mean().backward()
    before = expected_loss(unary)
    after = expected_loss((theta - 2.0 * theta.grad / theta.grad.abs().max()).detach().expand(samples, n, n))
    assert after < before - 0.5, (before, after)


# ---------------------------------------------------------------- the method and its ablations
def build(**overrides):
    cfg = resolve_config(LVMMed, "quick", dict(image_size=64, batch_size=32), {})
    cfg.update(solver_restarts=2, solver_iters=20, **overrides)
    torch.manual_seed(0)
    backbone, width = build_backbone("resnet18")
    return LVMMed(backbone, width, **method_kwargs(LVMMed, cfg)), cfg


@pytest.fixture(scope="module")
def views():
    from PIL import Image

    torch.manual_seed(0)
    transform, _ = build_transform(LVMMed, build()[1])
    images = [Image.fromarray((torch.rand(80, 72, 3) * 255).byte().numpy()) for _ in range(32)]
    samples = [transform(image) for image in images]
    return [torch.stack([s[k] for s in samples]) for k in range(4)]


def test_views_carry_normalised_cell_coordinates(views):
    x_s, x_t, grid_s, grid_t = views
    assert x_s.shape == (32, 3, 64, 64) and grid_s.shape == (32, 2, 2, 2)  # 64 px -> 2x2 ResNet cells
    # cell centres lie strictly inside the source image: a centre half a cell past the crop (lightly 1.6.0) fails
    assert 0 < grid_s.min() and grid_s.max() < 1 and 0 < grid_t.min() and grid_t.max() < 1
    assert not torch.equal(grid_s, grid_t)


@torch.no_grad()
def test_ablations_change_only_what_they_name(views):
    full = build()[0].affinities(views)
    no_mp = build(message_passing=False)[0].affinities(views)
    no_local = build(local_similarity=False)[0].affinities(views)
    first_order = build(second_order=False)[0].affinities(views)

    # no message passing: the same local term, same graphs; embeddings are the projector's output
    for a, b in zip(full["local"], no_mp["local"]):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(full["edges_s"], no_mp["edges_s"])
    assert not torch.allclose(full["z"], no_mp["z"])
    # no local similarity: vertex affinity is the global cosine alone; edges untouched
    glob = F.normalize(full["z"][0], dim=-1) @ F.normalize(full["z"][1], dim=-1).transpose(1, 2)
    torch.testing.assert_close(no_local["unary"], glob)
    torch.testing.assert_close(no_local["edge"], full["edge"])
    # first order: same vertex affinities, no edge term
    torch.testing.assert_close(first_order["unary"], full["unary"])
    assert first_order["edge"] is None


def test_gumbel_ablation_replaces_noise_by_a_margin_and_first_order_uses_lap(views, monkeypatch):
    import medssl_bench.methods.lvmmed as lvmmed_module

    calls = []
    real_lap, real_qap = lvmmed_module.solve_lap, lvmmed_module.solve_qap
    monkeypatch.setattr(lvmmed_module, "solve_lap", lambda u: calls.append(("lap", u.clone())) or real_lap(u))
    monkeypatch.setattr(lvmmed_module, "solve_qap", lambda u, e, *a, **k: calls.append(("qap", u.clone())) or real_qap(u, e, *a, **k))
    step = StepInfo(step=3)
    model, _ = build(gumbel_noise=False)
    with torch.no_grad():
        unary = model.affinities(views)["unary"]
        model.training_loss(views, step)
    assert calls[0][0] == "qap"
    torch.testing.assert_close(calls[0][1], unary - 1.0 * torch.eye(16))  # margin 1 against gold, no noise
    calls.clear()
    model, _ = build(second_order=False)
    with torch.no_grad():
        model.training_loss(views, step)
    assert [kind for kind, _ in calls] == ["lap"]


def test_noise_is_seeded_by_step_so_resume_is_exact(views):
    model, _ = build()
    noise = lambda step, salt=0: model._noise((2, 16, 16), "cpu", StepInfo(step=step), salt, 1.0)  # noqa: E731
    torch.manual_seed(123)  # the global RNG must not matter
    first = noise(5)
    torch.manual_seed(456)
    torch.testing.assert_close(noise(5), first)
    assert not torch.allclose(noise(6), first) and not torch.allclose(noise(5, salt=1), first)
    with torch.no_grad():
        assert model.training_loss(views, StepInfo(step=5))["loss"] == model.training_loss(views, StepInfo(step=5))["loss"]


def test_local_crops_add_matchings_against_the_global_views_and_leave_the_global_one_alone():
    """n_local_views=2 (32 px: one backbone cell each): the views are 2 x 64 px, 2 x 32 px, then their grids; the
    instances are the global pair's, then local crop k against global view k mod 2, each pair a whole batch of
    groups; with frozen BatchNorm statistics the global pair's affinities are the two-view model's, exactly."""
    from PIL import Image

    cfg = build(n_local_views=2, local_crop_size=32)[1]
    transform, n_images = build_transform(LVMMed, cfg)
    torch.manual_seed(1)
    samples = [transform(Image.fromarray((torch.rand(80, 72, 3) * 255).byte().numpy())) for _ in range(32)]
    views = [torch.stack([s[k] for s in samples]) for k in range(8)]
    assert n_images == 4 and [tuple(v.shape[1:]) for v in views] == [(3, 64, 64)] * 2 + [(3, 32, 32)] * 2 + [
        (2, 2, 2)] * 2 + [(1, 1, 2)] * 2
    assert 0 < min(float(g.min()) for g in views[4:]) and max(float(g.max()) for g in views[4:]) < 1
    assert LVMMed.view_pairs(4) == [(0, 1), (2, 0), (3, 1)]
    model = build(n_local_views=2, local_crop_size=32)[0].eval()
    with torch.no_grad():
        both = model.affinities(views)
        two = model.affinities(views[:2] + views[4:6])
    assert both["unary"].shape == (3 * 2, 16, 16) and both["edge"].shape[0] == 6 and both["z"].shape[0] == 4
    torch.testing.assert_close(both["unary"][:2], two["unary"], rtol=0, atol=0)
    torch.testing.assert_close(both["edge"][:2], two["edge"], rtol=0, atol=0)
    assert not torch.allclose(both["unary"][2:4], two["unary"])  # local crop 0 against global view 0: another
    model.train()
    out = model.training_loss(views, StepInfo(step=1))
    assert out["loss"].requires_grad and set(out) == {"loss", "match_acc", "local_match_acc"}
    assert 0 <= float(out["local_match_acc"]) <= 1


def test_each_process_needs_one_whole_group():
    cfg = build()[1]
    LVMMed.check_config({**cfg, "batch_size": 48}, world_size=2)  # 24: a group + the remainder (test_lvmmed_paper_profile)
    with pytest.raises(UserError, match="at least graph_size"):
        LVMMed.check_config({**cfg, "batch_size": 16}, world_size=2)
    with pytest.raises(UserError, match=r"n_local_views \(-1\) must be >= 0"):
        LVMMed.check_config({**cfg, "n_local_views": -1}, world_size=1)


# ---------------------------------------------------------------- learning, on a controlled problem
def learn_to_match(steps: int, gcn_residual: bool | None, last_activation: bool = False):
    """A learnable map must find the 8 view-invariant input dimensions among 32 noisy ones, trained only
    through LVM-Med's machinery: kNN graphs per view, (optional) GCN, vertex + edge affinities, QAP solve
    on Gumbel(0,1)-perturbed affinities, Hamming loss, IMLE gradient with lambda 80 (batch_mean: shift 80/8)."""
    from medssl_bench.methods.blocks.graph_matching import solve_qap
    from medssl_bench.methods.blocks.lvmmed_graph import GCN

    torch.manual_seed(0)
    groups, n, signal, nuisance = 8, 16, 8, 32
    project = torch.nn.Linear(signal + nuisance, 16)
    gcn = GCN(16, 16, 2, residual=gcn_residual, last_activation=last_activation) if gcn_residual is not None else None
    params = list(project.parameters()) + (list(gcn.parameters()) if gcn else [])
    optimizer = torch.optim.Adam(params, lr=1e-2)
    losses, accuracies = [], []
    for step in range(steps):
        gen = torch.Generator().manual_seed(step)
        points = torch.randn(groups, n, signal, generator=gen)
        z = [project(torch.cat([points + 0.1 * torch.randn(groups, n, signal, generator=gen),
                                3 * torch.randn(groups, n, nuisance, generator=gen)], -1)) for _ in range(2)]
        edges = [knn_edges(view, 5) for view in z]
        if gcn is not None:
            z = [gcn(view, gcn_adjacency(e, n)) for view, e in zip(z, edges)]
        unary, edge = vertex_affinity(z[0], z[1], None, 1.0), edge_affinity(z[0], z[1], edges[0], edges[1])
        gumbel = lambda shape: -torch.log(-torch.log(torch.rand(shape, generator=gen).clamp(1e-10, 1 - 1e-10)))  # noqa: E731
        loss, v = imle_hamming_matching(unary, edge, gumbel(unary.shape), gumbel(edge.shape), 80.0,
                                        lambda u, e, es, et: solve_qap(u, e, es, et, restarts=4, iters=30),
                                        edges[0], edges[1])
        loss.mean().backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.mean().item())
        accuracies.append(v.diagonal(dim1=1, dim2=2).mean().item())
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    return mean(losses[:20]), mean(losses[-20:]), mean(accuracies[:20]), mean(accuracies[-20:])


@pytest.mark.parametrize("gcn_residual", [None, True])
def test_second_order_imle_matching_learns(gcn_residual):
    first_loss, last_loss, first_acc, last_acc = learn_to_match(140, gcn_residual)
    assert first_acc < 0.2 and last_acc > 0.6, (first_acc, last_acc)
    assert last_loss < 0.5 * first_loss, (first_loss, last_loss)


def test_plain_gcn_over_smooths_a_16_node_knn_graph():
    """Why `gcn_residual` defaults to True: the literal two-layer GCN leaves matching at chance."""
    _, _, _, last_acc = learn_to_match(140, gcn_residual=False)
    assert last_acc < 0.2


# ---------------------------------------------------------------- settings of issue 19: λ convention, noise, solver seeds, σ, fp32
def test_lambda_convention_defaults_to_bb_gms_and_the_paper_profile_names_it():
    assert build()[0].hp["lambda_convention"] == "batch_mean"
    assert resolve_config(LVMMed, "paper", {}, {})["lambda_convention"] == "batch_mean"
    with pytest.raises(UserError, match="lambda_convention 'per_batch'"):
        build(lambda_convention="per_batch")


def test_vertex_and_edge_noise_have_their_own_scales(views, monkeypatch):
    import medssl_bench.methods.lvmmed as lvmmed_module

    seen = []
    real_qap = lvmmed_module.solve_qap
    monkeypatch.setattr(lvmmed_module, "solve_qap", lambda u, e, *a, **k: seen.append((u, e)) or real_qap(u, e, *a, **k))
    model, _ = build(vertex_noise_scale=0.5, edge_noise_scale=0.0)
    step = StepInfo(step=2)
    with torch.no_grad():
        aff = model.affinities(views)
        model.training_loss(views, step)
    gumbel = model._noise(aff["unary"].shape, "cpu", step, 0, 1.0)
    torch.testing.assert_close(seen[0][0], aff["unary"] + 0.5 * gumbel)
    torch.testing.assert_close(seen[0][1], aff["edge"])  # edge scale 0: the edge affinities unperturbed


def test_solver_restarts_are_seeded_by_step(views, monkeypatch):
    import medssl_bench.methods.lvmmed as lvmmed_module

    seeds, solutions = [], []
    real_qap = lvmmed_module.solve_qap

    def spy(*a, **k):
        seeds.append(k["seed"])
        solutions.append(real_qap(*a, **k))
        return solutions[-1]

    monkeypatch.setattr(lvmmed_module, "solve_qap", spy)
    model, _ = build(lam=0.5)  # batch_mean over 2 groups: shift 0.25, so the target problem is solved too
    for step in (5, 5, 6):
        model.training_loss(views, StepInfo(step=step))["loss"].backward()
    assert len(seeds) == 6 and seeds[0] != seeds[1]  # forward and target solves draw apart
    assert seeds[:2] == seeds[2:4] and all(torch.equal(a, b) for a, b in zip(solutions[:2], solutions[2:4]))
    assert seeds[4] != seeds[0] and seeds[5] != seeds[1]  # another step, other restarts


def test_gcn_last_activation_puts_relu_on_the_output():
    from medssl_bench.methods.blocks.lvmmed_graph import GCN

    torch.manual_seed(0)
    z = torch.randn(1, 16, 8)
    adjacency = gcn_adjacency(knn_edges(z, 5), 16)
    plain, last = GCN(8, 8, 2, residual=False), GCN(8, 8, 2, residual=False, last_activation=True)
    last.load_state_dict(plain.state_dict())
    h_plain, h_last = plain(z, adjacency), last(z, adjacency)
    assert (h_plain < 0).any()
    torch.testing.assert_close(h_last, F.relu(h_plain))
    assert build(gcn_last_activation=True)[0].gcn.last_activation and not build()[0].gcn.last_activation


def test_local_term_stays_float32_under_bf16_autocast():
    gen = torch.Generator().manual_seed(0)
    maps = [F.relu(torch.randn(1, 4, 9, 512, generator=gen)) for _ in range(2)]
    grid = torch.rand(1, 4, 9, 2, generator=gen)
    ref = local_affinity(maps[0], maps[1], grid, grid.flip(2), 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        kept = local_affinity(maps[0], maps[1], grid, grid.flip(2), 4)
        low = local_affinity(maps[0], maps[1], grid, grid.flip(2), 4, fp32=False)
    for a, b, c in zip(kept, low, ref):
        assert a.dtype == torch.float32 and torch.equal(a, c)
        assert not torch.equal(b.float(), c)  # what the option prevents
