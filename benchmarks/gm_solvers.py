"""Measure graph-matching (QAP) solvers for LVM-Med's second-order matching (issue #3 item 5).

Run:  .venv/bin/python benchmarks/gm_solvers.py [--quick] [--device cpu|cuda] [--threads 2]

Writes benchmarks/results/gm_solvers.json (one entry per run label, e.g. per machine/device) and prints
the markdown table in benchmarks/README.md. Deterministic: every instance set and every
random start is seeded.

Instances (close to the real use; see make_instances): N points in R^128 with cluster structure, two noisy
views of them, unit-normalised; kNN graphs (k=5 by default) per view; c^v_ia = cos(z^s_i, z^t_a),
c^e_{ia,jb} = cos(z^s_i - z^s_j, z^t_a - z^t_b); in the "train"/"hard" families Gumbel(0,1) noise is added
to both c^v and c^e as in LVM-Med's perturb-and-MAP forward pass; "backward" is the IMLE backward
problem of a "train" instance (c^v + lambda*(2*I - 1), lambda = 80).
Reference: brute force over all 8! permutations (8-node); best known on 16-node = best over every solver
output and a heavy search (64 restarts x 400 steps of our tabu search), optionally checked
by an exact MILP (scipy/HiGHS) with a time limit on a subset (--milp N).
"""
from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import platform
import time
from pathlib import Path

from medssl_bench.harness.process import configure_process

configure_process()  # before torch loads its OpenMP runtime (thread wait policy), as `bench` does

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
from medssl_bench.methods.blocks import graph_matching as gm  # noqa: E402

LAMBDA = 80.0


# ----------------------------------------------------------------------------------------------- instances
def _knn_edges(z: np.ndarray, k: int) -> np.ndarray:
    sim = z @ z.T
    np.fill_diagonal(sim, -np.inf)
    nbr = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    return np.stack([np.repeat(np.arange(len(z)), k), nbr.reshape(-1)], 1)


def make_instances(n_inst: int, N: int, k: int, sigma: float, gumbel: bool, seed: int,
                   dim: int = 128, n_clusters: int = 4, backward: bool = False):
    """Return dict of tensors (float64 on CPU): unary [B,N,N], edge_aff [B,E,E], edges_s/t [B,E,2]."""
    rng = np.random.default_rng(seed)
    U, C, Es, Et = [], [], [], []
    for _ in range(n_inst):
        centers = rng.standard_normal((n_clusters, dim))
        x = centers[rng.integers(0, n_clusters, N)] + 0.8 * rng.standard_normal((N, dim))
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        views = []
        for _v in range(2):
            z = x + sigma * rng.standard_normal((N, dim)) / np.sqrt(dim)
            views.append(z / np.linalg.norm(z, axis=1, keepdims=True))
        zs, zt = views
        es, et = _knn_edges(zs, k), _knn_edges(zt, k)
        ds = zs[es[:, 0]] - zs[es[:, 1]]
        dt_ = zt[et[:, 0]] - zt[et[:, 1]]
        ds /= np.linalg.norm(ds, axis=1, keepdims=True)
        dt_ /= np.linalg.norm(dt_, axis=1, keepdims=True)
        cv, ce = zs @ zt.T, ds @ dt_.T
        if gumbel:
            cv = cv + rng.gumbel(size=cv.shape)
            ce = ce + rng.gumbel(size=ce.shape)
        if backward:  # IMLE backward solve: c + eps - lambda * dL/dv with Hamming loss, gold = identity
            cv = cv + LAMBDA * (2.0 * np.eye(N) - 1.0)
        U.append(cv), C.append(ce), Es.append(es), Et.append(et)
    t = lambda a, dt_=torch.float64: torch.from_numpy(np.stack(a)).to(dt_)  # noqa: E731
    return dict(unary=t(U), edge_aff=t(C), edges_s=t(Es, torch.long), edges_t=t(Et, torch.long))


FAMILIES = {  # name: (sigma, gumbel, backward)
    "clean": (0.5, False, False),
    "train": (0.5, True, False),
    "hard": (1.5, True, False),
    "backward": (0.5, True, True),
}


# ------------------------------------------------------------------------------------------- brute force
def brute_force(inst) -> tuple[np.ndarray, np.ndarray]:
    """Exact optimum by enumerating all N! permutations (N <= 9). Returns (objective [B], perm [B,N])."""
    U, C = inst["unary"].numpy(), inst["edge_aff"].numpy()
    ES, ET = inst["edges_s"].numpy(), inst["edges_t"].numpy()
    B, N, _ = U.shape
    P = np.array(list(itertools.permutations(range(N))), dtype=np.int64)  # [N!, N]
    best, arg = np.empty(B), np.empty((B, N), dtype=np.int64)
    for b in range(B):
        Et_n = len(ET[b])
        lookup = np.full((N, N), Et_n, dtype=np.int64)
        lookup[ET[b][:, 0], ET[b][:, 1]] = np.arange(Et_n)
        cpad = np.concatenate([C[b], np.zeros((len(ES[b]), 1))], 1)
        obj = U[b][np.arange(N), P].sum(1)
        tgt = lookup[P[:, ES[b][:, 0]], P[:, ES[b][:, 1]]]  # [N!, Es]
        obj = obj + cpad[np.arange(len(ES[b])), tgt].sum(1)
        i = int(obj.argmax())
        best[b], arg[b] = obj[i], P[i]
    return best, arg


# -------------------------------------------------------------------------------------------- MILP check
def milp_optimum(inst, b: int, time_limit: float):
    """Exact QAP optimum of instance b by a MILP (scipy.optimize.milp / HiGHS); (value, proven_optimal)."""
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import coo_matrix

    U, C = inst["unary"][b].numpy(), inst["edge_aff"][b].numpy()
    es, et = inst["edges_s"][b].numpy(), inst["edges_t"][b].numpy()
    N, nS, nT = U.shape[0], len(es), len(et)
    nv, ny = N * N, nS * nT
    vid = lambda i, a: i * N + a  # noqa: E731
    rows, cols, vals, lo, hi = [], [], [], [], []
    r = 0

    def add(entries, lb, ub):
        nonlocal r
        for c, v in entries:
            rows.append(r), cols.append(c), vals.append(v)
        lo.append(lb), hi.append(ub)
        r += 1

    for i in range(N):
        add([(vid(i, a), 1.0) for a in range(N)], 1, 1)
        add([(vid(a, i), 1.0) for a in range(N)], 1, 1)
    y = lambda e, f: nv + e * nT + f  # noqa: E731
    # aggregated (Adams-Johnson style) constraints: sum over target edges leaving a of y_{e,f} <= v_ia, etc.
    for e, (i, j) in enumerate(es):
        for a in range(N):
            add([(y(e, f), 1.0) for f in range(nT) if et[f, 0] == a] + [(vid(i, a), -1.0)], -np.inf, 0)
            add([(y(e, f), 1.0) for f in range(nT) if et[f, 1] == a] + [(vid(j, a), -1.0)], -np.inf, 0)
    for f, (a, bb) in enumerate(et):
        for i in range(N):
            add([(y(e, f), 1.0) for e in range(nS) if es[e, 0] == i] + [(vid(i, a), -1.0)], -np.inf, 0)
            add([(y(e, f), 1.0) for e in range(nS) if es[e, 1] == i] + [(vid(i, bb), -1.0)], -np.inf, 0)
    for e, (i, j) in enumerate(es):  # y >= v_ia + v_jb - 1 where the pair is penalised
        for f, (a, bb) in enumerate(et):
            if C[e, f] < 0:
                add([(y(e, f), 1.0), (vid(i, a), -1.0), (vid(j, bb), -1.0)], -1, np.inf)
    A = coo_matrix((vals, (rows, cols)), shape=(r, nv + ny)).tocsr()
    c = -np.concatenate([U.reshape(-1), C.reshape(-1)])
    integrality = np.concatenate([np.ones(nv), np.zeros(ny)])
    res = milp(c, constraints=LinearConstraint(A, lo, hi), integrality=integrality,
               bounds=Bounds(0, 1), options={"time_limit": time_limit, "disp": False})
    if res.x is None:
        return float("nan"), False, float("nan")
    bound = -getattr(res, "mip_dual_bound", float("nan"))
    return -res.fun, res.status == 0, bound


# ----------------------------------------------------------------------------------------------- solvers
def _pygm():
    import pygmtools as pygm

    pygm.set_backend("pytorch")
    return pygm


def pygm_solver(name: str):
    def run(unary, edge_aff, es, et):
        pygm = _pygm()
        B, N, _ = unary.shape
        K = gm.affinity_matrix(unary, edge_aff, es, et, layout="pygm")
        K = 0.5 * (K + K.transpose(1, 2))
        fn = {"sm": pygm.sm, "rrwm": pygm.rrwm, "ipfp": pygm.ipfp}[name]
        X = fn(K, n1max=N, n2max=N)
        return pygm.hungarian(X)
    return run


def _ipfp(Ks, x, iters: int) :
    """Batched IPFP on symmetric Ks [B, n2, n2] from R starts x [B, R, n2] (fractional or 0/1).

    Returns the best discrete point visited, as permutations [B, R, N], and its objective [B, R].
    """
    B, R, n2 = x.shape
    N = int(round(n2 ** 0.5))
    best_perm = torch.zeros(B, R, N, dtype=torch.long, device=x.device)
    best_obj = torch.full((B, R), -float("inf"), dtype=Ks.dtype, device=x.device)
    for _ in range(iters):
        g = torch.bmm(x, Ks)  # half the gradient of x^T Ks x
        perm = gm.hungarian(g.view(B * R, N, N)).view(B, R, N)
        b = gm._perm_to_mat(perm, Ks.dtype).view(B, R, n2)
        bK = torch.bmm(b, Ks)
        obj_b = (bK * b).sum(-1)
        better = obj_b > best_obj
        best_obj = torch.where(better, obj_b, best_obj)
        best_perm = torch.where(better[..., None], perm, best_perm)
        d = b - x
        alpha = (g * d).sum(-1)  # half the directional derivative at x
        beta = obj_b - 2.0 * (bK * x).sum(-1) + (g * x).sum(-1)  # d^T Ks d
        t = torch.where(beta < 0, (-alpha / beta.clamp(max=-1e-12)).clamp(0.0, 1.0), torch.ones_like(beta))
        x_new = x + t[..., None] * d
        if torch.allclose(x_new, x, atol=1e-9):
            break
        x = x_new
    return best_perm, best_obj


def ours_ipfp_ls(u, c, es, et):
    """Baseline of our own: IPFP from the uniform matrix (as pygmtools) + 2-swap local search, float64."""
    Ks = gm._solver_matrix(u, c, es, et, torch.float64)
    B, N, _ = u.shape
    perm, _ = _ipfp(Ks, torch.full((B, 1, N * N), 1.0 / N, dtype=torch.float64, device=u.device), 50)
    perm, _ = gm.local_search_2swap(Ks, perm)
    return gm._perm_to_mat(perm[:, 0], u.dtype)


def ours(**opts):
    return lambda u, c, es, et: gm.solve_qap(u, c, es, et, **opts)


def lap(u, c, es, et):
    return gm.solve_lap(u)


DEFAULT = dict(restarts=16, iters=100)  # = solve_qap defaults


def solvers():
    return {
        "LAP on c^v (scipy; 1st-order ablation)": lap,
        "pygmtools SM + Hungarian": pygm_solver("sm"),
        "pygmtools RRWM + Hungarian": pygm_solver("rrwm"),
        "pygmtools IPFP (+Hungarian)": pygm_solver("ipfp"),
        "ours: IPFP + 2-swap LS": ours_ipfp_ls,
        "ours: tabu R=1 x 50 it": ours(restarts=1, iters=50),
        "ours: tabu R=4 x 50 it": ours(restarts=4, iters=50),
        "ours: tabu R=8 x 50 it": ours(restarts=8, iters=50),
        "ours: tabu R=16 x 100 it (default)": ours(**DEFAULT),
    }


REFERENCE_16 = dict(restarts=64, iters=400, seed=12345)


# ----------------------------------------------------------------------------------------------- measure
def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def evaluate(inst, opt, fn, dev, timing_reps: int):
    args = [inst[k].to(dev) for k in ("unary", "edge_aff", "edges_s", "edges_t")]
    args[0], args[1] = args[0].float(), args[1].float()  # solvers get float32, as in training
    fn(*[a[:2] for a in args])  # warm-up (imports, allocator)

    def timed(xs):
        _sync(dev)
        t0 = time.perf_counter()
        out = fn(*xs)
        _sync(dev)
        return out, time.perf_counter() - t0

    times, times16 = [], []
    for _ in range(timing_reps):
        v, t = timed(args)
        times.append(t)
        times16.append(timed([x[:16] for x in args])[1])  # one batch of 256 images = 16 groups
    v = v.to("cpu", torch.float64)
    is_perm = bool(((v.sum(1) == 1).all() & (v.sum(2) == 1).all() & ((v == 0) | (v == 1)).all()).item())
    obj = gm.qap_objective(v, inst["unary"], inst["edge_aff"], inst["edges_s"], inst["edges_t"]).numpy()
    gap = np.maximum((opt - obj) / np.abs(opt), 0.0)  # exact ties can come out at -1e-16
    return dict(
        valid_permutations=is_perm,
        mean_rel_gap=float(gap.mean()), max_rel_gap=float(gap.max()),
        frac_optimal=float((gap <= 1e-9).mean()),
        time_s=float(np.median(times)), time_min_s=float(min(times)), time_runs_s=[float(t) for t in times],
        time16_s=float(np.median(times16)),
    ), obj


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="few instances, for a smoke run")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ref-device", default=None, help="device for the 16-node reference search (default: --device)")
    ap.add_argument("--suites", default=None, help="comma-separated substrings: run only matching suites")
    ap.add_argument("--reps", type=int, default=None, help="timing repetitions (default 3, 1 with --quick)")
    ap.add_argument("--light-ref", action="store_true",
                    help="16-node reference search 16 x 200 instead of 64 x 400 (for timing-only runs)")
    ap.add_argument("--milp", type=int, default=0, help="certify best-known on this many 16-node instances/family")
    ap.add_argument("--milp-time", type=float, default=60.0)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gm_solvers.json"),
                    help="JSON file; this run is stored under runs[<label>], other labels are kept")
    ap.add_argument("--label", default=None, help="run label (default: <device>-<hostname>)")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    n8, n16, reps = (20, 20, 1) if a.quick else (200, 200, 3)
    reps = a.reps or reps

    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    sv = solvers()
    suites = [(f"8-node {fam} (k=3)", 8, 3, fam) for fam in ("clean", "train", "hard")]
    suites += [("8-node train (k=5)", 8, 5, "train")]
    suites += [(f"16-node {fam} (k=5)", 16, 5, fam) for fam in ("clean", "train", "hard", "backward")]
    suites = [(si, *s) for si, s in enumerate(suites)]  # the index seeds the instances
    if a.suites:
        suites = [s for s in suites if any(p in s[1] for p in a.suites.split(","))]
    results = {}
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn()) as prog:
        task = prog.add_task("suites", total=len(suites) * (len(sv) + 1))
        for si, sname, N, k, fam in suites:
            sigma, gumbel, backward = FAMILIES[fam]
            inst = make_instances(n8 if N == 8 else n16, N, k, sigma, gumbel, seed=1000 + si, backward=backward)
            prog.update(task, description=f"{sname}: reference")
            ident = gm.qap_objective(torch.eye(N, dtype=torch.float64).expand(len(inst["unary"]), N, N),
                                     inst["unary"], inst["edge_aff"], inst["edges_s"], inst["edges_t"]).numpy()
            if N <= 9:
                opt, _ = brute_force(inst)
                ref_kind = "exact (brute force over all permutations)"
            else:
                rd = torch.device(a.ref_device or a.device)
                light = a.quick or a.light_ref
                ref_opts = dict(REFERENCE_16, restarts=16, iters=200) if light else REFERENCE_16
                v = gm.solve_qap(*[inst[k].to(rd) for k in ("unary", "edge_aff", "edges_s", "edges_t")],
                                 **ref_opts).cpu()
                opt = gm.qap_objective(v, inst["unary"], inst["edge_aff"], inst["edges_s"], inst["edges_t"]).numpy()
                ref_kind = "best known (max over all solvers and a 64-restart x 400-step tabu search)"
            prog.advance(task)
            objs, rows = {}, {}
            for name, fn in sv.items():
                prog.update(task, description=f"{sname}: {name}")
                rows[name], objs[name] = evaluate(inst, opt, fn, dev, reps)
                prog.advance(task)
            if N > 9:  # best known = max over everything; recompute gaps against it
                allobj = np.stack([opt] + list(objs.values()))
                new_opt = allobj.max(0)
                ref_improved = int((new_opt > opt + 1e-9).sum())
                opt = new_opt
                for name in sv:
                    gap = np.maximum((opt - objs[name]) / np.abs(opt), 0.0)
                    rows[name].update(mean_rel_gap=float(gap.mean()), max_rel_gap=float(gap.max()),
                                      frac_optimal=float((gap <= 1e-9).mean()))
            else:
                ref_improved = 0
            milp = []
            if N > 9 and a.milp:
                for b in range(min(a.milp, len(opt))):
                    prog.update(task, description=f"{sname}: MILP {b + 1}/{a.milp}")
                    val, proven, bound = milp_optimum(inst, b, a.milp_time)
                    milp.append(dict(instance=b, milp_value=val, proven_optimal=bool(proven),
                                     dual_bound=bound, best_known=float(opt[b])))
            results[sname] = dict(
                n_nodes=N, k=k, family=fam, n_instances=len(opt), reference=ref_kind,
                reference_improved_by_other_solvers=ref_improved,
                frac_identity_optimal=float((ident >= opt - 1e-9).mean()),
                mean_reference_objective=float(opt.mean()), solvers=rows, milp_check=milp)

    import pygmtools
    import scipy

    meta = dict(
        date=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        machine=dict(platform=platform.platform(), processor=platform.processor(), python=platform.python_version(),
                     cpu_count=__import__("os").cpu_count(), torch_threads=torch.get_num_threads(),
                     device=str(dev) + (f" ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else "")),
        versions=dict(torch=torch.__version__, numpy=np.__version__, scipy=scipy.__version__,
                      pygmtools=pygmtools.__version__, lpmp_py="not installable (see benchmarks/README.md)"),
        quick=a.quick, timing="median of %d runs of one batched call on all instances of a suite, inputs float32 "
        "on the device, including affinity-matrix construction and the Hungarian projection; time16 = same on the "
        "first 16 instances (one batch of 256 images)" % reps,
    )
    out = Path(a.out)
    if a.quick:
        out = out.with_name(out.stem + "_quick.json")
    meta.update(suites_run=[s[1] for s in suites], timing_reps=reps,
                reference_16=dict(REFERENCE_16, restarts=16, iters=200) if (a.quick or a.light_ref) else REFERENCE_16)
    label = a.label or f"{dev.type}-{platform.node()}"
    runs = json.loads(out.read_text()).get("runs", {}) if out.exists() else {}
    runs[label] = dict(meta=meta, suites=results)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(runs=runs), indent=1))
    print(markdown_table(results))
    print(f"\nwrote {out}")


def markdown_table(results) -> str:
    lines = []
    names = list(next(iter(results.values()))["solvers"])
    head8 = [s for s in results if results[s]["n_nodes"] == 8]
    head16 = [s for s in results if results[s]["n_nodes"] == 16]
    for group, title in ((head8, "gap to exact optimum (brute force)"), (head16, "gap to best known")):
        if not group:
            continue
        n = results[group[0]]["n_instances"]
        lines.append(f"\n**{title}**, {n} instances per column: mean / max relative gap (%), fraction optimal\n")
        lines.append("| solver | " + " | ".join(group) + " |")
        lines.append("|---" * (len(group) + 1) + "|")
        for name in names:
            cells = []
            for s in group:
                r = results[s]["solvers"][name]
                cells.append(f"{100 * r['mean_rel_gap']:.2f} / {100 * r['max_rel_gap']:.1f} / "
                             f"{100 * r['frac_optimal']:.0f}%")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("| *identity is optimal* | " + " | ".join(
            f"{100 * results[s]['frac_identity_optimal']:.0f}%" for s in group) + " |")
    if not head16:
        return "\n".join(lines)
    n16 = results[head16[0]]["n_instances"]
    lines.append(f"\n**time** (s, median of runs, one batched call): {n16} and 16 sixteen-node instances\n")
    lines.append("| solver | " + " | ".join(f"{s}: {n16} / 16" for s in head16) + " |")
    lines.append("|---" * (len(head16) + 1) + "|")
    for name in names:
        lines.append(f"| {name} | " + " | ".join(
            f"{results[s]['solvers'][name]['time_s']:.3f} / {results[s]['solvers'][name]['time16_s']:.3f}"
            for s in head16) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
