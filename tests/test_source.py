"""Git source against real repositories made in tmp_path."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from harness.git import git
from tasks.build.source import (
    checkout,
    commit_info,
    commit_order,
    redact_url,
    repo_key,
    resolve_commit,
    resolve_heads,
)
from tasks.core.errors import BuildError, ConfigError


def commit(repo: Path, name: str, text: str, message: str) -> str:
    (repo / name).write_text(text)
    git(repo, "add", name)
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


@pytest.fixture
def repo(tmp_path: Path) -> dict[str, str]:
    """main with two commits, a feature branch with one more."""
    path = tmp_path / "app"
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    first = commit(path, "app.txt", "v1\n", "First version")
    second = commit(path, "app.txt", "v2\n", "Second version")
    git(path, "checkout", "-q", "-b", "feature/x")
    feature = commit(path, "app.txt", "v3\n", "Feature work")
    git(path, "checkout", "-q", "main")
    return {"path": str(path), "first": first, "second": second, "feature": feature}


def test_resolve_heads_returns_existing_branches_only(repo: dict[str, str]) -> None:
    heads = resolve_heads(repo["path"], ["main", "feature/x", "missing"])
    assert heads == {"main": repo["second"], "feature/x": repo["feature"]}


def test_resolve_commit_gives_branch_head(repo: dict[str, str], tmp_path: Path) -> None:
    assert resolve_commit(repo["path"], "main", cache_dir=tmp_path / "c") == repo["second"]


@pytest.mark.parametrize("length", [7, 12, 40])
def test_resolve_commit_expands_abbreviated_sha(
    repo: dict[str, str], tmp_path: Path, length: int
) -> None:
    got = resolve_commit(repo["path"], "main", repo["first"][:length], cache_dir=tmp_path / "c")
    assert got == repo["first"]


def test_unknown_branch_lists_existing_branches(repo: dict[str, str], tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        resolve_commit(repo["path"], "mian", cache_dir=tmp_path / "c")
    msg = str(err.value)
    assert "branch 'mian' not found" in msg
    assert "branches: feature/x, main" in msg
    assert "fix source.branch" in msg


@pytest.mark.parametrize(
    ("sha", "expect"),
    [
        ("0" * 40, "not found"),
        ("deadbee", "not found"),
        ("xyz1234", "is not a commit SHA"),
        ("abc", "is not a commit SHA"),
    ],
)
def test_bad_sha_is_a_config_error(
    repo: dict[str, str], tmp_path: Path, sha: str, expect: str
) -> None:
    with pytest.raises(ConfigError, match=expect):
        resolve_commit(repo["path"], "main", sha, cache_dir=tmp_path / "c")


def test_missing_repository_is_a_build_error(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="ls-remote failed"):
        resolve_heads(str(tmp_path / "nope"), ["main"])


def test_checkout_gives_exact_commit_and_reuses_it(repo: dict[str, str], tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    tree = checkout(repo["path"], repo["first"], cache)
    assert tree == cache / repo_key(repo["path"]) / repo["first"]
    assert (tree / "app.txt").read_text() == "v1\n"
    marker = (tree / ".git").stat().st_mtime_ns
    assert checkout(repo["path"], repo["first"], cache) == tree
    assert (tree / ".git").stat().st_mtime_ns == marker  # reused, not recreated

    info = commit_info(tree)
    assert info["sha"] == repo["first"]
    assert info["subject"] == "First version"
    assert info["author"] == "Dev One <dev@example.com>"
    assert repo["first"].startswith(info["short"])
    assert info["date"][:4].isdigit()


def test_checkout_after_a_kill_inside_worktree_add(repo: dict[str, str], tmp_path: Path) -> None:
    """A worker killed while git added the work tree leaves it registered and locked ("initializing")
    with its folder gone or half made; the rerun's checkout must still give the commit."""
    cache = tmp_path / "cache"
    tree = checkout(repo["path"], repo["first"], cache)
    mirror = Path(git(tree, "rev-parse", "--git-common-dir"))
    git(mirror, "worktree", "lock", "--reason", "initializing", str(tree))
    shutil.rmtree(tree)
    assert "locked" in git(mirror, "worktree", "list", "--porcelain")
    again = checkout(repo["path"], repo["first"], cache)
    assert again == tree and (again / "app.txt").read_text() == "v1\n"
    assert git(again, "rev-parse", "HEAD") == repo["first"]


def test_checkout_of_another_sha_uses_the_same_mirror(repo: dict[str, str], tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    checkout(repo["path"], repo["first"], cache)
    mirror = cache / repo_key(repo["path"]) / "mirror.git"
    inode = mirror.stat().st_ino
    second = checkout(repo["path"], repo["feature"], cache)
    assert (second / "app.txt").read_text() == "v3\n"
    assert mirror.stat().st_ino == inode
    assert sorted(p.name for p in mirror.parent.iterdir() if not p.name.startswith(".")) == sorted(
        ["mirror.git", repo["first"], repo["feature"]]
    )


def test_dirty_checkout_is_replaced_by_a_clean_one(repo: dict[str, str], tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    tree = checkout(repo["path"], repo["second"], cache)
    (tree / "app.txt").write_text("edited\n")
    (tree / "stray.txt").write_text("left over\n")
    again = checkout(repo["path"], repo["second"], cache)
    assert (again / "app.txt").read_text() == "v2\n"
    assert not (again / "stray.txt").exists()


def test_new_commit_is_fetched_into_the_existing_mirror(
    repo: dict[str, str], tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    checkout(repo["path"], repo["first"], cache)
    newer = commit(Path(repo["path"]), "app.txt", "v4\n", "Newer")
    assert resolve_commit(repo["path"], "main", newer[:9], cache_dir=cache) == newer
    assert (checkout(repo["path"], newer, cache) / "app.txt").read_text() == "v4\n"


def test_checkout_needs_a_full_sha(repo: dict[str, str], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="full 40-character SHA"):
        checkout(repo["path"], repo["first"][:8], tmp_path / "cache")


@pytest.mark.parametrize(
    ("url", "expect"),
    [
        (
            "https://user:s3cr3t@git.example.com/org/app.git",
            "https://***@git.example.com/org/app.git",
        ),
        ("https://x-access-token:ghp_abc@github.com/o/r", "https://***@github.com/o/r"),
        ("https://github.com/o/r.git", "https://github.com/o/r.git"),
        ("git@github.com:o/r.git", "git@github.com:o/r.git"),
        ("/srv/git/app", "/srv/git/app"),
        (
            "fatal: unable to access 'https://u:tok@h/r/': Could not resolve host: h",
            "fatal: unable to access 'https://***@h/r/': Could not resolve host: h",
        ),
    ],
)
def test_redact_url(url: str, expect: str) -> None:
    assert redact_url(url) == expect


def test_errors_and_cache_keys_never_show_credentials(tmp_path: Path) -> None:
    url = f"file://user:s3cr3t@localhost{tmp_path}/missing.git"
    with pytest.raises(BuildError) as err:
        resolve_heads(url, ["main"])
    assert "s3cr3t" not in str(err.value)
    assert "***@" in str(err.value)
    assert "s3cr3t" not in repo_key(url)


# -- provenance: only the configured branch's history is released ------------------------


def test_commit_only_on_another_branch_is_refused(repo: dict[str, str], tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        resolve_commit(repo["path"], "main", repo["feature"], cache_dir=tmp_path / "c")
    msg = str(err.value)
    assert f"commit {repo['feature'][:12]} is not in the history of branch main" in msg
    assert "merge it into main" in msg
    assert resolve_commit(repo["path"], "feature/x", repo["first"], cache_dir=tmp_path / "c") == repo["first"]


def test_commit_of_a_deleted_branch_is_refused(repo: dict[str, str], tmp_path: Path) -> None:
    path = Path(repo["path"])
    git(path, "config", "uploadpack.allowAnySHA1InWant", "true")  # as GitHub serves unreachable commits
    git(path, "checkout", "-q", "-b", "doomed")
    doomed = commit(path, "app.txt", "v9\n", "Never merged")
    git(path, "checkout", "-q", "main")
    cache = tmp_path / "c"
    assert resolve_commit(repo["path"], "doomed", doomed[:10], cache_dir=cache) == doomed
    git(path, "branch", "-q", "-D", "doomed")
    for cache_dir in (cache, tmp_path / "fresh"):  # the mirror had it / fetched by SHA now
        with pytest.raises(ConfigError, match="not in the history of branch main"):
            resolve_commit(repo["path"], "main", doomed, cache_dir=cache_dir)


@pytest.mark.parametrize(
    ("base", "other", "order"),
    [
        ("first", "second", "newer"),
        ("second", "first", "older"),
        ("second", "second", "same"),
        ("second", "feature", "newer"),
        ("first", "feature", "newer"),
    ],
)
def test_commit_order(repo: dict[str, str], tmp_path: Path, base: str, other: str, order: str) -> None:
    assert commit_order(repo["path"], repo[base], repo[other], cache_dir=tmp_path / "c") == order


def test_commit_order_diverged_and_unknown(repo: dict[str, str], tmp_path: Path) -> None:
    path = Path(repo["path"])
    third = commit(path, "app.txt", "v4\n", "Third on main")
    cache = tmp_path / "c"
    assert commit_order(repo["path"], third, repo["feature"], cache_dir=cache) == "diverged"
    assert commit_order(repo["path"], "1" * 40, third, cache_dir=cache) == "unknown"
    assert commit_order(repo["path"], third, "1" * 40, cache_dir=cache) == "missing"
    assert commit_order(repo["path"], "not-a-sha", third, cache_dir=cache) == "unknown"
