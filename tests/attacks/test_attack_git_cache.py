"""Attack: a build writes into the git cache it was checked out from, to run code in the pipeline later.

A build's work tree is a worktree of the cache's mirror, so a command in it can
set ``core.fsmonitor``, add a filter driver or a hook to the mirror, or point its
own ``.git`` at a repository of its choosing. None of it may run on a later
checkout or look-up, even after the bad commit is gone from the branch.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from harness.git import git
from tasks.build import source


def repository(tmp_path: Path) -> tuple[Path, str, str]:
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "app.txt").write_text("v1\n")
    (repo / ".gitattributes").write_text("*.txt filter=evil\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "v1")
    first = git(repo, "rev-parse", "HEAD")
    (repo / "app.txt").write_text("v2\n")
    git(repo, "commit", "-q", "-am", "v2")
    return repo, first, git(repo, "rev-parse", "HEAD")


def build_runs(tree: Path, *commands: str) -> None:
    """What a buildspec on the worker's host can do in its work tree."""
    for command in commands:
        subprocess.run(["sh", "-c", command], cwd=tree, check=True, capture_output=True)


def test_config_and_hooks_a_build_leaves_in_the_mirror_never_run(tmp_path: Path) -> None:
    repo, first, second = repository(tmp_path)
    cache = tmp_path / "cache"
    marker = tmp_path / "pwned"
    tree = source.checkout(str(repo), first, cache)
    build_runs(
        tree,
        f"git config core.fsmonitor 'touch {marker}.fsmonitor; false'",
        f"git config filter.evil.smudge 'touch {marker}.smudge; cat'",
        f"git config filter.evil.clean 'touch {marker}.clean; cat'",
        f"git config core.sshCommand 'touch {marker}.ssh; ssh'",
        f"printf '#!/bin/sh\\ntouch {marker}.hook\\n' > \"$(git rev-parse --git-common-dir)/hooks/post-checkout\"",
        "chmod +x \"$(git rev-parse --git-common-dir)/hooks/post-checkout\"",
    )
    assert (tree / ".git").is_file()
    # the next releases of this repository: look-ups, a checkout of another commit, the same commit again
    assert source.resolve_commit(str(repo), "main", second[:10], cache_dir=cache) == second
    again = source.checkout(str(repo), second, cache)
    source.checkout(str(repo), first, cache)
    assert source.commit_order(str(repo), first, second, cache_dir=cache) == "newer"
    assert sorted(p.name for p in tmp_path.glob("pwned*")) == []
    mirror = again.parent / "mirror.git"
    keys = subprocess.run(["git", "config", "--file", str(mirror / "config"), "--name-only", "--list"],
                          capture_output=True, text=True, check=True).stdout.split()
    assert set(keys) <= {"core.repositoryformatversion", "core.filemode", "core.bare"}
    assert not (mirror / "hooks" / "post-checkout").exists()


def test_a_work_tree_pointed_at_another_repository_is_made_anew(tmp_path: Path) -> None:
    repo, first, _second = repository(tmp_path)
    cache = tmp_path / "cache"
    marker = tmp_path / "pwned"
    tree = source.checkout(str(repo), first, cache)
    evil = tmp_path / "evil.git"
    git(tmp_path, "init", "-q", "--bare", str(evil))
    git(evil, "config", "core.fsmonitor", f"touch {marker}; false")
    git(evil, "config", "filter.evil.clean", f"touch {marker}.clean; cat")
    (tree / ".git").write_text(f"gitdir: {evil}\n")
    again = source.checkout(str(repo), first, cache)  # the same commit: the cached tree would be reused
    assert again == tree
    assert (tree / ".git").read_text().strip() != f"gitdir: {evil}"
    assert (tree / "app.txt").read_text() == "v1\n"
    assert sorted(p.name for p in tmp_path.glob("pwned*")) == []
