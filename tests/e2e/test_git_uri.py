"""`mlflow run https://github.com/<owner>/<repo> --version <sha>`: a real clone of a pinned commit.

The GitHub URL is mapped to a local bare repository with git's url.<path>.insteadOf, so MLflow
clones it through git exactly as it would from GitHub, offline."""

from __future__ import annotations

import subprocess

from support import ROOT, Store

URL = "https://github.com/mlpipe-example/mlpipe"


def test_pinned_commit_runs_from_a_git_uri_into_the_callers_store(fresh_store: Store, tmp_path):
    sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.strip()
    head_before = subprocess.run(["git", "symbolic-ref", "-q", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    bare = tmp_path / "mlpipe.git"
    subprocess.run(["git", "clone", "--quiet", "--bare", str(ROOT), str(bare)], check=True)
    gitconfig = tmp_path / "gitconfig"
    gitconfig.write_text(f'[url "{bare}"]\n\tinsteadOf = {URL}\n')
    env = {**fresh_store.env, "GIT_CONFIG_GLOBAL": str(gitconfig)}
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()

    result = fresh_store.mlflow_run("--version", sha, uri=URL, cwd=workdir, env=env, check=True)

    parent = fresh_store.newest("tags.`pipeline.role` = 'pipeline'")
    assert parent.info.status == "FINISHED"
    # the one line that says where it went: the caller's store (empty before it: "new")
    (where,) = [line for line in result.stderr.splitlines() if line.startswith("[mlpipe] tracking store ")]
    assert where.startswith(f'[mlpipe] tracking store {fresh_store.uri}, experiment "Default" (id 0), '
                            f"run {parent.info.run_id}"), where
    assert parent.data.tags["mlflow.source.git.commit"] == sha
    assert parent.data.tags["mlflow.source.git.repoURL"] == URL
    children = fresh_store.children(parent.info.run_id)
    assert len(children) == 6 and all(c.info.status == "FINISHED" for c in children)
    assert {c.data.tags["mlflow.source.git.commit"] for c in children} == {sha}
    assert {c.data.tags["pipeline.process"] for c in children} == {"warm"}  # the helper runs from the clone too
    assert fresh_store.client.get_model_version_by_alias("wine_model", "champion")
    # Nothing was written to the caller's directory, and the user's checkout was not touched.
    assert sorted(p.name for p in workdir.iterdir()) == []
    assert subprocess.run(["git", "symbolic-ref", "-q", "HEAD"], cwd=ROOT, capture_output=True,
                          text=True).stdout == head_before

