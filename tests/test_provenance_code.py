"""provenance.code_version: the commit, and whether code changed since; a rewritten benchmark result is not code."""
from __future__ import annotations

import subprocess

import medssl_bench.harness.provenance as provenance


def git(repo, *args):
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


def test_dirty_means_changed_code_not_rewritten_results(tmp_path, monkeypatch):
    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    (tmp_path / "code.py").write_text("x = 1\n")
    (tmp_path / "benchmarks" / "results" / "speed.json").write_text("{}\n")
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", ".")
    git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    monkeypatch.setattr(provenance, "REPO_ROOT", tmp_path)

    def version() -> dict:
        provenance.code_version.cache_clear()  # cached per process: a run's code does not change under it
        return provenance.code_version()

    clean = version()
    assert len(clean["git_sha"]) == 40 and clean["dirty"] is False
    (tmp_path / "benchmarks" / "results" / "speed.json").write_text('{"step": 0.4}\n')
    assert version()["dirty"] is False
    (tmp_path / "code.py").write_text("x = 2  # changed\n")  # (another size: git, by stat, within one second)
    assert version()["dirty"] is True
    provenance.code_version.cache_clear()  # the repository's own, for later tests
