"""A build box: one build's own container engine, rootless, with no way back to the worker.

CodeBuild runs every build in a fresh container with its own role and network.
A box gives a build the same on the worker:

* **Its own engine, which the build never reaches.** A Podman service
  (Docker-compatible API) runs for this one build as the unprivileged build user
  (``ECS_PIPELINE_BUILD_USER``, default ``ecs-build``) in a user namespace of its
  own: root inside a container is that user outside. Its image storage is new for
  every build, so one build cannot plant an image another build then uses. The
  pipeline runs the build's container in it, and the build's ``docker build``,
  ``tag``, ``push`` and ``login`` as requests it checks first
  (tasks/build/docker_requests.py): no engine socket, this one or the one that runs
  the pipeline's and the sandbox's containers, is in the build's view.
* **Its own view of the files.** The engine sees a root made of the worker's
  ``/usr`` and ``/etc`` (read-only) and the box's own folder; the worker's home,
  caches, sandbox state and sockets do not exist there, so nothing the engine
  builds can name them.
* **Its own network.** A network namespace with loopback only; the registry
  and the endpoints in ``build.egress`` are forwarded in (tasks/build/egress.py).
* **Its own processes.** A PID namespace: when the box closes, at the end of
  the build, at its timeout or when the worker dies, the kernel ends every
  process in it, ``setsid`` or not. Memory, CPU and process limits from
  ``build.resources`` apply to the whole box (cgroups).

The build's commands run in a container of that engine: ``build.image`` (pulled
into the box) or the standard image (tasks/build/standard_image.py), with every
capability dropped, ``no-new-privileges``, a non-root user, a read-only root,
the checkout copied into a folder of its own, and the request folders of its
``docker`` command.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pwd
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tasks.build import egress
from tasks.build.standard_image import standard_root
from tasks.core.errors import BuildError

SUBID_START, SUBID_COUNT = 400000, 65536
TOOLS = {"podman": "podman", "newuidmap": "uidmap", "unshare": "util-linux", "setpriv": "util-linux",
         "pivot_root": "util-linux", "ip": "iproute2"}
CGROUP_V1 = ("memory", "pids", "cpu")
BOXES = "ecs-pipeline-builds"
CONTAINERS_CONF = """\
[containers]
netns = "host"
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
"""
STORAGE_CONF = "[storage]\ndriver = \"overlay\"\n"


@dataclass(frozen=True)
class Resources:
    memory_mib: int
    cpus: float
    pids: int


@dataclass
class BuildBox:
    """A running box: its folder, the engine's socket, and what to close."""

    folder: Path
    user: pwd.struct_passwd
    keeper: subprocess.Popen[bytes]
    forwarders: egress.Forwarders
    cgroups: list[Path]
    image_root: Path  # the standard image's root, mounted read-only
    inner: int  # the namespaces' first process, as the worker sees it

    @property
    def src(self) -> Path:
        return self.folder / "src"

    @property
    def scripts(self) -> Path:
        return self.folder / "scripts"

    @property
    def values(self) -> Path:
        return self.folder / "values"

    @property
    def requests(self) -> Path:
        """Where the build's docker command leaves its requests (the build user's, writable in the container)."""
        return self.folder / "requests"

    @property
    def answers(self) -> Path:
        """Where the pipeline answers them (root's, read-only in the container)."""
        return self.folder / "answers"

    @property
    def socket(self) -> Path:
        return self.folder / "xdg" / "podman.sock"

    @property
    def engine_url(self) -> str:
        return f"unix://{self.socket}"

    def client(self) -> list[str]:
        """``podman --remote`` for this box's engine as the build user, inside the box: its files, network,
        processes and cgroups. What it reads (a build's context) is what the box sees, never the worker's."""
        q = shlex.quote
        join = "".join(f"echo $$ > {q(str(g / 'cgroup.procs'))}; " for g in self.cgroups)
        return ["sh", "-c", f'{join}exec "$@"', "box-client", "nsenter", "--target", str(self.inner), "--mount",
                "--net", "--pid", "--root", "--wd", "--", *_as_build_user(self.folder, self.user),
                "podman", "--remote", "--url", self.engine_url]

    def stop(self) -> None:
        """End every process of the box (its files stay until the box closes)."""
        _stop(self.keeper, self.forwarders, self.cgroups)


def missing_tools() -> list[str]:
    return sorted({pkg for tool, pkg in TOOLS.items() if shutil.which(tool) is None})


def build_user(name: str) -> pwd.struct_passwd:
    """The unprivileged user builds run as, with its subordinate ids; made when missing (as root)."""
    try:
        user = pwd.getpwnam(name)
    except KeyError:
        user = None
    if user is not None and user.pw_uid == 0:
        raise BuildError(f"ECS_PIPELINE_BUILD_USER={name} is root: builds need an unprivileged user of their own")
    if user is not None and _has_subids(name):
        return user
    if os.geteuid() != 0:
        raise BuildError(
            f"builds run as the unprivileged user {name}, which is missing or has no subordinate ids; as root: "
            f"useradd --system --no-create-home --shell /usr/sbin/nologin {name} && usermod --add-subuids "
            f"{SUBID_START}-{SUBID_START + SUBID_COUNT - 1} --add-subgids {SUBID_START}-{SUBID_START + SUBID_COUNT - 1}"
            f" {name} (or set build.runner: host-unsafe, see docs/buildspec.md, the build box)")
    with _locked(Path("/etc/.ecs-pipeline-build-user.lock")):
        with contextlib.suppress(KeyError):
            user = pwd.getpwnam(name)
        if user is None:
            subprocess.run(["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
                            "--shell", "/usr/sbin/nologin", name], check=True, capture_output=True)
        if not _has_subids(name):
            start = _free_subid_start()
            ids = f"{start}-{start + SUBID_COUNT - 1}"
            subprocess.run(["usermod", "--add-subuids", ids, "--add-subgids", ids, name], check=True,
                           capture_output=True)
        return pwd.getpwnam(name)


def _has_subids(name: str) -> bool:
    def listed(path: str) -> bool:
        with contextlib.suppress(OSError):
            return any(line.split(":", 1)[0] == name for line in Path(path).read_text().splitlines())
        return False
    return listed("/etc/subuid") and listed("/etc/subgid")


def _free_subid_start() -> int:
    taken: list[tuple[int, int]] = []
    for path in ("/etc/subuid", "/etc/subgid"):
        with contextlib.suppress(OSError):
            for line in Path(path).read_text().splitlines():
                parts = line.split(":")
                if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
                    taken.append((int(parts[1]), int(parts[1]) + int(parts[2])))
    start = SUBID_START
    while any(a < start + SUBID_COUNT and start < b for a, b in taken):
        start += SUBID_COUNT
    return start


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _cgroups(name: str, limits: Resources) -> list[Path]:
    """The box's cgroups with its limits (cgroup v2, else v1 memory, pids and cpu); none where not writable."""
    base = Path("/sys/fs/cgroup")
    made: list[Path] = []
    if (base / "cgroup.controllers").exists():
        group = base / BOXES / name
        with contextlib.suppress(OSError):
            group.parent.mkdir(exist_ok=True)
            (base / BOXES / "cgroup.subtree_control").write_text("+memory +pids +cpu")
            group.mkdir()
            made.append(group)
            (group / "memory.max").write_text(str(limits.memory_mib * 1024 * 1024))
            (group / "pids.max").write_text(str(limits.pids))
            (group / "cpu.max").write_text(f"{int(limits.cpus * 100000)} 100000")
        return made
    values = {"memory": {"memory.limit_in_bytes": str(limits.memory_mib * 1024 * 1024)},
              "pids": {"pids.max": str(limits.pids)},
              "cpu": {"cpu.cfs_period_us": "100000", "cpu.cfs_quota_us": str(int(limits.cpus * 100000))}}
    for controller in CGROUP_V1:
        group = base / controller / BOXES / name
        try:
            group.mkdir(parents=True)
        except OSError:
            continue
        made.append(group)
        for knob, value in values[controller].items():
            with contextlib.suppress(OSError):
                (group / knob).write_text(value)
    return made


def _registries_conf(endpoints: list[egress.Endpoint]) -> str:
    """Plain-HTTP registries the engine may use: the loopback ones only (the sandbox's)."""
    plain = [e for e in endpoints if egress.is_loopback(e.host)]
    return "".join(f'[[registry]]\nlocation = "{e.host}:{e.port}"\ninsecure = true\n\n' for e in plain)


def _inside_script(folder: Path, user: pwd.struct_passwd, image_root: Path) -> str:
    """What runs as root, first, inside the new namespaces: loopback up, the engine's root, then the engine."""
    q = shlex.quote
    root = folder / "root"
    binds_ro = ["/usr", "/etc", str(image_root)]
    lines = [
        "set -e",
        "ip link set lo up",
        f": > {q(str(folder / 'net-ready'))}",
        f"R={q(str(root))}",
        'mount --bind "$R" "$R"',
        'mkdir -p "$R/usr" "$R/etc" "$R/dev" "$R/proc" "$R/sys" "$R/tmp" "$R/var/tmp" "$R/.old"',
        *[f'ln -s usr/{d} "$R/{d}"' for d in ("bin", "sbin", "lib", "lib64") if Path(f"/{d}").is_symlink()],
        *[f'mkdir -p "$R/{d}" && mount --rbind /{d} "$R/{d}" && mount -o remount,bind,ro "$R/{d}"'
          for d in ("bin", "sbin", "lib", "lib64") if Path(f"/{d}").is_dir() and not Path(f"/{d}").is_symlink()],
        'mount -t tmpfs -o mode=1777 tmpfs "$R/tmp"',
        'mount -t tmpfs -o mode=1777 tmpfs "$R/var/tmp"',
        *[f'mkdir -p "$R{p}" && mount --rbind {q(p)} "$R{p}" && mount -o remount,bind,ro "$R{p}"'
          for p in binds_ro],
        f'mount --bind {q(str(folder / "hosts"))} "$R/etc/hosts"',
        'mount --rbind /dev "$R/dev"',
        'mount --rbind /sys "$R/sys" && mount -o remount,bind,ro "$R/sys"',
        'mount -t proc proc "$R/proc"',
        f'mkdir -p "$R"{q(str(folder))} && mount --bind {q(str(folder))} "$R"{q(str(folder))}',
        'cd "$R" && pivot_root . .old && cd / && umount -l /.old && rmdir /.old',
        # Not exec: this shell stays the namespace's first process, as root. The engine changes its user,
        # which clears a parent-death signal; this shell keeps unshare's, so the worker's death ends it
        # and, with it, every process of the namespace.
        " ".join(q(w) for w in _as_build_user(folder, user)) + " podman --root {storage} --runroot {run} "
        "system service --time=0 unix://{sock} &".format(
            storage=q(str(folder / "storage")), run=q(str(folder / "r")), sock=q(str(folder / "xdg" / "podman.sock"))),
        "wait",
    ]
    return "\n".join(lines) + "\n"


def _as_build_user(folder: Path, user: pwd.struct_passwd) -> list[str]:
    """The words that run a command as the build user, with the box's Podman settings and nothing else."""
    conf = folder / "conf"
    return ["setpriv", "--reuid", str(user.pw_uid), "--regid", str(user.pw_gid), "--clear-groups", "env", "-i",
            f"HOME={folder / 'tmp'}", f"XDG_RUNTIME_DIR={folder / 'xdg'}", f"XDG_CONFIG_HOME={conf}",
            f"CONTAINERS_REGISTRIES_CONF={conf / 'containers' / 'registries.conf'}", f"TMPDIR={folder / 'tmp'}",
            "PATH=/usr/sbin:/usr/bin:/sbin:/bin"]


def _keeper_script(cgroups: list[Path]) -> str:
    """The box's first process, on the worker: joins the cgroups, starts the namespaces, and ends them
    when its standard input closes (the box closing, or the worker dying, even by SIGKILL)."""
    q = shlex.quote
    join = "".join(f"echo $$ > {q(str(g / 'cgroup.procs'))}; " for g in cgroups)
    sweep = "".join(f"kill -KILL $(cat {q(str(g / 'cgroup.procs'))} | grep -vx $$) 2>/dev/null; " for g in cgroups)
    return (f"{join}unshare --net --pid --mount --fork --mount-proc --kill-child --propagation private "
            f'-- sh "$1" >&2 & child=$!; echo "box $child"; read -r _ || true; kill -KILL "$child" 2>/dev/null; '
            f'wait "$child" 2>/dev/null; {sweep}exit 0')


def remove_leftovers(boxes: Path) -> None:
    """Folders of boxes whose pipeline process and keeper are both gone (a worker killed mid-build): their
    processes went with the keeper; the folders go here. A folder whose process lives is never touched,
    stopped keeper or not: a build's files are read after its box stopped. A folder with neither yet is a
    box being made, unless it is old."""
    if not boxes.is_dir():
        return
    for folder in boxes.iterdir():
        if _owned(folder):
            continue
        try:
            pid = int((folder / "keeper.pid").read_text())
        except (OSError, ValueError):
            with contextlib.suppress(OSError):
                if time.time() - folder.stat().st_mtime > 300:
                    _remove_folder(folder)
            continue
        if not _keeps(pid, folder):
            _remove_folder(folder)


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command's name (state first), None when PID is gone or a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if not fields or fields[0] == "Z" else fields


def _started(pid: int) -> str | None:
    """When process PID started (clock ticks after boot), None when it is gone or a zombie."""
    fields = _stat(pid)
    return fields[19] if fields is not None else None


def _owned(folder: Path) -> bool:
    """Whether the pipeline process that made the box at FOLDER still runs (the same process: its start too)."""
    try:
        pid, started = (folder / "owner").read_text().split()
    except (OSError, ValueError):
        return False
    return pid.isdigit() and _started(int(pid)) == started


def _keeps(pid: int, folder: Path) -> bool:
    """Whether process PID is alive (not a zombie) and is the keeper of the box at FOLDER."""
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return _stat(pid) is not None and str(folder).encode() in command


def _remove_folder(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)


def _chown_tree(path: Path, uid: int, gid: int) -> None:
    for top, dirs, files in os.walk(path):
        os.chown(top, uid, gid)
        for name in [*dirs, *files]:
            os.chown(os.path.join(top, name), uid, gid, follow_symlinks=False)


def _wait_for(check: Callable[[], bool], deadline: float, what: str, keeper: subprocess.Popen[bytes],
              log: Path) -> None:
    """Until CHECK holds: a start-up of a tenth of a second or so, so polled from 5 ms, backing off to 100 ms."""
    pause = 0.005
    while not check():
        if keeper.poll() is not None or time.monotonic() > deadline:
            said = log.read_text("utf-8", "replace").strip().splitlines()[-5:] if log.exists() else []
            raise BuildError(f"the build box did not start ({what}): " + (" | ".join(said) or "no output"))
        time.sleep(pause)
        pause = min(pause * 2, 0.1)


def _first_child(pid: int) -> int:
    """The namespaces' first process: unshare's child (unshare itself stays outside the PID namespace)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    if not children:
        raise BuildError("the build box did not start: its namespaces have no first process")
    return int(children[0])


def _engine_answers(sock: Path) -> bool:
    if not sock.exists():
        return False
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as s:
        s.settimeout(1)
        s.connect(str(sock))
        s.sendall(b"GET /_ping HTTP/1.0\r\n\r\n")
        return b" 200 " in s.recv(128)
    return False


@contextlib.contextmanager
def open_box(tree: Path, boxes: Path, user_name: str, limits: Resources,
             wanted: list[tuple[str, int]], deadline: float) -> Iterator[BuildBox]:
    """A box for one build of TREE (copied in), reaching only WANTED; closed, all of it, on exit."""
    missing = missing_tools()
    if missing:
        raise BuildError(f"builds run in a build box, which needs Debian's {', '.join(missing)}: "
                         f"apt-get install {' '.join(missing)} (or set build.runner: host-unsafe)")
    if os.geteuid() != 0:
        raise BuildError("a build box is made by a worker running as root (it drops to the build user); "
                         "run the worker as root or set build.runner: host-unsafe")
    user = build_user(user_name)
    image_root = standard_root(boxes.parent / "images")
    boxes.mkdir(parents=True, exist_ok=True)
    os.chmod(boxes, 0o711)
    remove_leftovers(boxes)
    name = secrets.token_hex(6)
    folder = boxes / name
    folder.mkdir(mode=0o711)
    (folder / "owner").write_text(f"{os.getpid()} {_started(os.getpid())}")  # see remove_leftovers
    forwarders = egress.Forwarders()
    cgroups: list[Path] = []
    keeper: subprocess.Popen[bytes] | None = None
    try:
        for sub in ("storage", "r", "xdg", "tmp", "conf/containers", "values", "requests", "answers"):
            (folder / sub).mkdir(parents=True)
        (folder / "root").mkdir()
        (folder / "scripts").mkdir(mode=0o755)
        shutil.copytree(tree, folder / "src", symlinks=True, ignore=shutil.ignore_patterns(".git"))
        endpoints = egress.plan(wanted)
        (folder / "hosts").write_text(egress.hosts_file(endpoints))
        (folder / "conf/containers/containers.conf").write_text(CONTAINERS_CONF)
        (folder / "conf/containers/storage.conf").write_text(STORAGE_CONF)
        (folder / "conf/containers/registries.conf").write_text(_registries_conf(endpoints))
        for sub in ("storage", "r", "xdg", "tmp", "conf", "values", "src", "requests"):
            _chown_tree(folder / sub, user.pw_uid, user.pw_gid)
        os.chmod(folder / "xdg", 0o700)
        os.chmod(folder / "answers", 0o755)
        (folder / "inside.sh").write_text(_inside_script(folder, user, image_root))
        cgroups = _cgroups(name, limits)
        log = folder / "box.log"
        with log.open("wb") as out:
            keeper = subprocess.Popen(["sh", "-c", _keeper_script(cgroups), "box", str(folder / "inside.sh")],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=out,
                                      start_new_session=True)
        (folder / "keeper.pid").write_text(str(keeper.pid))
        first = keeper.stdout.readline().decode().split()  # type: ignore[union-attr]
        if len(first) != 2 or first[0] != "box":
            raise BuildError("the build box did not start: " + log.read_text("utf-8", "replace")[-400:])
        netns = f"/proc/{first[1]}/ns/net"
        _wait_for(lambda: (folder / "net-ready").exists(), deadline, "network", keeper, log)
        forwarders.start(netns, endpoints)
        _wait_for(lambda: _engine_answers(folder / "xdg" / "podman.sock"), deadline, "engine", keeper, log)
        yield BuildBox(folder, user, keeper, forwarders, cgroups, image_root, _first_child(int(first[1])))
    finally:
        _stop(keeper, forwarders, cgroups)
        _remove_folder(folder)


def _stop(keeper: subprocess.Popen[bytes] | None, forwarders: egress.Forwarders, cgroups: list[Path]) -> None:
    """Every process of the box ended: the namespace's, then whatever its cgroups still hold. Idempotent."""
    forwarders.close()
    if keeper is not None:
        with contextlib.suppress(OSError):
            keeper.stdin.close()  # type: ignore[union-attr]
        try:
            keeper.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(keeper.pid, signal.SIGKILL)
            keeper.wait()
        with contextlib.suppress(OSError):
            keeper.stdout.close()  # type: ignore[union-attr]
    for group in cgroups:
        for _ in range(50):
            procs = [int(p) for p in (group / "cgroup.procs").read_text().split()] if group.exists() else []
            if not procs:
                break
            for pid in procs:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.02)
        with contextlib.suppress(OSError):
            group.rmdir()
