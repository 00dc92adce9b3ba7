"""Git: which commit a branch points at, and a clean work tree of exactly that commit.

One bare mirror per repository lives under the cache directory; each commit
gets its own detached worktree next to it, so checking out another SHA only
fetches what is new. URLs may carry credentials (https://user:token@host/...):
every message that names a repository goes through ``redact_url``.

Provenance: only commits in the configured branch's history are released
(``resolve_commit``), and ``commit_order`` tells whether a commit moves
production forward from the live one.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from tasks.core.errors import BuildError, ConfigError, TransientError

GIT_TIMEOUT_SECONDS = 600
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/\s@]+@")
_SHA = re.compile(r"^[0-9a-f]{7,40}$")
_FULL_SHA = re.compile(r"^[0-9a-f]{40}$")
# How a commit relates to a base one: descends from it (newer), is in its history
# (older), neither (diverged), is not in the repository (missing), or the base is not (unknown).
Ancestry = Literal["same", "newer", "older", "diverged", "missing", "unknown"]
_TRANSIENT_GIT = (
    "could not resolve host",
    "connection timed out",
    "connection reset",
    "connection refused",
    "failed to connect",
    "operation timed out",
    "the remote end hung up unexpectedly",
    "early eof",
    "returned error: 5",
    "http 5",
)


def redact_url(url: str) -> str:
    """URL (or any text) with the user:password part of every URL replaced by ***."""
    return _USERINFO.sub(r"\g<scheme>***@", url)


def repo_key(repo: str) -> str:
    """A directory name for REPO: readable, unique, and free of credentials."""
    name = redact_url(repo) if "://" in repo else str(Path(repo).expanduser().resolve())
    tail = re.sub(r"[^A-Za-z0-9._-]+", "-", name.split("://")[-1]).strip("-.")[-48:]
    return f"{tail or 'repo'}-{hashlib.sha256(name.encode()).hexdigest()[:10]}"


# A build runs in a work tree of the cache's mirror and can write to it (its .git names the mirror):
# whatever it leaves there (a hook, core.fsmonitor, a filter or an ssh command in the config) must
# never run in the pipeline. Command-line config outranks the repository's, and MIRROR_CONFIG is
# all a mirror's own config may hold: anything else and the mirror is made anew.
SAFE_CONFIG = ("core.hooksPath=/dev/null", "core.fsmonitor=false", "protocol.ext.allow=never")
MIRROR_CONFIG = frozenset({"core.repositoryformatversion", "core.filemode", "core.bare"})


def git_argv(*args: str) -> list[str]:
    """git with the settings a repository's own files cannot override."""
    return ["git", *(arg for pair in SAFE_CONFIG for arg in ("-c", pair)), *args]


def _mirror_config_is_ours(mirror: Path) -> bool:
    config = mirror / "config"
    if config.is_symlink() or not config.is_file():
        return False
    proc = subprocess.run(["git", "config", "--file", str(config), "--null", "--list", "--name-only"],
                          capture_output=True, text=True, check=False)
    keys = {key.lower() for key in proc.stdout.split("\0") if key}
    return proc.returncode == 0 and keys <= {k.lower() for k in MIRROR_CONFIG}


def _git(args: list[str], repo: str, *, cwd: Path | None = None, what: str) -> str:
    """Run git; failures become BuildError (or TransientError for network faults)."""
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C", "GIT_ASKPASS": "true"}
    try:
        proc = subprocess.run(
            git_argv(*args),
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT_SECONDS,
            check=False,
        )
    except subprocess.TimeoutExpired:
        # not chained: the original's command line may hold the URL's credentials
        raise TransientError(
            f"git {what} for {redact_url(repo)} timed out after {GIT_TIMEOUT_SECONDS}s"
        ) from None
    if proc.returncode != 0:
        detail = redact_url(proc.stderr.strip()) or f"exit status {proc.returncode}"
        cls = TransientError if any(t in detail.lower() for t in _TRANSIENT_GIT) else BuildError
        raise cls(f"git {what} failed for {redact_url(repo)}: {detail}")
    return proc.stdout


def _list_heads(repo: str) -> dict[str, str]:
    out = _git(["ls-remote", "--heads", "--", repo], repo, what="ls-remote")
    heads: dict[str, str] = {}
    for line in out.splitlines():
        sha, _, ref = line.partition("\t")
        if ref.startswith("refs/heads/"):
            heads[ref.removeprefix("refs/heads/")] = sha
    return heads


def resolve_heads(repo: str, branches: list[str]) -> dict[str, str]:
    """Branch -> full SHA for the BRANCHES that exist in REPO, with one ls-remote call."""
    heads = _list_heads(repo)
    return {b: heads[b] for b in branches if b in heads}


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Serialise work on one repository's cache across threads and processes."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _mirror(repo: str, repo_dir: Path) -> Path:
    mirror = repo_dir / "mirror.git"
    if (mirror / "HEAD").exists() and not _mirror_config_is_ours(mirror):
        shutil.rmtree(mirror, ignore_errors=True)  # a build wrote into it: fetched again from the source
    if not (mirror / "HEAD").exists():
        shutil.rmtree(mirror, ignore_errors=True)
        _git(["init", "--quiet", "--bare", str(mirror)], repo, what="init")
    return mirror


def _fetch_heads(repo: str, mirror: Path) -> None:
    # The URL is passed each time rather than stored, so no credential lands on disk.
    _git(
        ["fetch", "--quiet", "--prune", "--no-tags", "--", repo, "+refs/heads/*:refs/heads/*"],
        repo,
        cwd=mirror,
        what="fetch",
    )


def _lookup(mirror: Path, sha: str, repo: str, branch: str) -> str | None:
    """Full SHA of commit SHA (full or abbreviated) in MIRROR, None if absent."""
    proc = subprocess.run(
        git_argv("rev-parse", "--verify", "--end-of-options", f"{sha}^{{commit}}"),
        cwd=mirror,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode == 0:
        return proc.stdout.strip()
    if "ambiguous" in proc.stderr:
        raise ConfigError(
            f"commit {sha} is ambiguous in {redact_url(repo)} (branch {branch}); "
            f"give more characters of the SHA"
        )
    return None


def _find_commit(repo: str, branch: str, sha: str, mirror: Path) -> str | None:
    found = _lookup(mirror, sha, repo, branch)
    if found is None:
        _fetch_heads(repo, mirror)
        found = _lookup(mirror, sha, repo, branch)
    if found is None and _FULL_SHA.match(sha):
        try:  # commits no branch points at any more: servers may still hand them out
            _git(["fetch", "--quiet", "--no-tags", "--", repo, sha], repo, cwd=mirror, what="fetch")
        except BuildError:
            return None
        found = _lookup(mirror, sha, repo, branch)
    return found


def resolve_commit(
    repo: str, branch: str, sha: str | None = None, *, cache_dir: Path
) -> str:
    """The full SHA to release: BRANCH's head, or SHA checked to exist in REPO."""
    heads = _list_heads(repo)
    if branch not in heads:
        known = ", ".join(sorted(heads)) or "none"
        raise ConfigError(
            f"branch {branch!r} not found in {redact_url(repo)} (branches: {known}); "
            f"fix source.branch in the service config or push the branch"
        )
    if sha is None or sha == heads[branch]:
        return heads[branch]
    wanted = sha.strip().lower()
    if not _SHA.match(wanted):
        raise ConfigError(
            f"{sha!r} is not a commit SHA (7 to 40 hex characters) for {redact_url(repo)} "
            f"branch {branch}"
        )
    head = heads[branch]
    repo_dir = cache_dir / repo_key(repo)
    with _locked(repo_dir):
        mirror = _mirror(repo, repo_dir)
        found = _find_commit(repo, branch, wanted, mirror)
        if found is None:
            raise ConfigError(
                f"commit {sha} not found in {redact_url(repo)} (branch {branch} is at "
                f"{head[:12]}); check the SHA or push the commit"
            )
        if _lookup(mirror, head, repo, branch) is None:
            _fetch_heads(repo, mirror)
        in_branch = _is_ancestor(repo, mirror, found, head)
    if not in_branch:
        raise ConfigError(
            f"commit {found[:12]} is not in the history of branch {branch} of {redact_url(repo)} "
            f"(head {head[:12]}): it is only on another branch or on a deleted one; merge it into "
            f"{branch} and release that, or set source.branch to the branch that holds it"
        )
    return found


def _is_ancestor(repo: str, mirror: Path, ancestor: str, descendant: str) -> bool:
    """Whether ANCESTOR is DESCENDANT or in its history (both must be in MIRROR)."""
    proc = subprocess.run(
        git_argv("merge-base", "--is-ancestor", ancestor, descendant),
        cwd=mirror,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode not in (0, 1):
        detail = redact_url(proc.stderr.strip()) or f"exit status {proc.returncode}"
        raise BuildError(f"git merge-base failed for {redact_url(repo)}: {detail}")
    return proc.returncode == 0


def commit_order(repo: str, base: str, other: str, *, cache_dir: Path) -> Ancestry:
    """How commit OTHER relates to commit BASE in REPO: is it newer (a descendant), older, diverged?

    "missing" when OTHER is not a commit of REPO (a replayed push of a commit since
    garbage-collected), "unknown" when only BASE is not (a live release built elsewhere)
    or either is not a full SHA.
    """
    if base == other:
        return "same"
    if not (_FULL_SHA.match(base) and _FULL_SHA.match(other)):
        return "unknown"
    repo_dir = cache_dir / repo_key(repo)
    with _locked(repo_dir):
        mirror = _mirror(repo, repo_dir)
        if _find_commit(repo, "(any)", other, mirror) is None:
            return "missing"
        if _find_commit(repo, "(any)", base, mirror) is None:
            return "unknown"
        if _is_ancestor(repo, mirror, base, other):
            return "newer"
        if _is_ancestor(repo, mirror, other, base):
            return "older"
    return "diverged"


def in_branch(repo: str, branch: str, sha: str, *, cache_dir: Path) -> bool:
    """Whether commit SHA is BRANCH's head or in its history (heads fetched again before a no)."""
    repo_dir = cache_dir / repo_key(repo)
    with _locked(repo_dir):
        mirror = _mirror(repo, repo_dir)
        for attempt in range(2):
            head = _lookup(mirror, f"refs/heads/{branch}", repo, branch)
            if head and _lookup(mirror, sha, repo, branch) and _is_ancestor(repo, mirror, sha, head):
                return True
            if attempt == 0:
                _fetch_heads(repo, mirror)
    return False


def _is_clean_checkout(tree: Path, sha: str) -> bool:
    """Whether TREE is still the mirror's untouched work tree of SHA (its .git names the mirror, nothing else)."""
    dot_git = tree / ".git"
    if dot_git.is_symlink() or not dot_git.is_file():
        return False
    expected = (tree.parent / "mirror.git" / "worktrees" / sha).resolve()
    named = dot_git.read_text(errors="replace").strip().removeprefix("gitdir:").strip()
    if Path(named).resolve() != expected:
        return False  # a build pointed it at a repository of its own choosing
    head = subprocess.run(
        git_argv("rev-parse", "HEAD"), cwd=tree, capture_output=True, text=True, check=False
    )
    status = subprocess.run(
        git_argv("status", "--porcelain", "--ignored", "--untracked-files=all"),
        cwd=tree,
        capture_output=True,
        text=True,
        check=False,
    )
    return head.stdout.strip() == sha and status.returncode == 0 and status.stdout == ""


def checkout(repo: str, sha: str, cache_dir: Path) -> Path:
    """A clean work tree of exactly commit SHA, reused when one is already there."""
    if not _FULL_SHA.match(sha):
        raise ConfigError(f"checkout needs a full 40-character SHA, got {sha!r}; resolve it first")
    repo_dir = cache_dir / repo_key(repo)
    tree = repo_dir / sha
    with _locked(repo_dir):
        if _is_clean_checkout(tree, sha):
            return tree
        mirror = _mirror(repo, repo_dir)
        shutil.rmtree(tree, ignore_errors=True)
        _git(["worktree", "prune"], repo, cwd=mirror, what="worktree prune")
        if _find_commit(repo, "(any)", sha, mirror) is None:
            raise BuildError(f"commit {sha} not found in {redact_url(repo)}; check the SHA")
        # -f -f: a worker killed inside `worktree add` leaves the tree registered and locked
        # ("initializing") with its folder gone; this cache is ours and the folder was just removed.
        _git(
            ["worktree", "add", "--quiet", "--force", "--force", "--detach", str(tree), sha],
            repo,
            cwd=mirror,
            what="worktree add",
        )
    return tree


def commit_info(repo_dir: Path) -> dict[str, str]:
    """sha, short, subject, author and (author) date of the commit checked out in REPO_DIR."""
    out = _git(
        ["log", "-1", "--format=%H%x00%h%x00%s%x00%an <%ae>%x00%aI"],
        str(repo_dir),
        cwd=repo_dir,
        what="log",
    )
    sha, short, subject, author, date = out.rstrip("\n").split("\x00")
    return {"sha": sha, "short": short, "subject": subject, "author": author, "date": date}
