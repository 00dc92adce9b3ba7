"""The sandbox AWS endpoint: moto's server app plus the controller, one process.

Usage: ``python -m sandbox.server --host 127.0.0.1 --port 4566 [--state-dir DIR]``.
The controller shares the process so it can read and write moto's in-memory
backends directly; SIGTERM/SIGINT stop the proxies and remove the containers.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import make_server

from sandbox.controller import iam_enforce
from sandbox.controller.loop import Controller
from sandbox.controller.middleware import SandboxMiddleware

log = logging.getLogger("sandbox")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="sandbox.server", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4566)
    parser.add_argument("--state-dir", default=None, help="where to write the server's pid and log")
    args = parser.parse_args(argv)
    if not ipaddress.ip_address(args.host).is_loopback:
        parser.error("the sandbox only listens on loopback addresses (127.0.0.0/8)")
    return args


def _read_moto_modules_once() -> None:
    """moto lists its package folder on disk for every request, to tell which service a Host header names.

    The folder does not change while the server runs: it is listed once here. That listing was about a
    sixth of the server's CPU under a release's polling.
    """
    from moto import backends

    modules = tuple(backends.list_of_moto_modules())
    setattr(backends, "list_of_moto_modules", lambda: modules)  # noqa: B010 - replaces moto's function


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    if args.state_dir:
        state = Path(args.state_dir)
        state.mkdir(parents=True, exist_ok=True)
        (state / "server.pid").write_text(str(os.getpid()))
    controller = Controller(owner=f"{args.host}:{args.port}")
    controller.install()
    _read_moto_modules_once()
    enforcer = iam_enforce.Enforcer.from_env() if iam_enforce.enabled() else None
    if enforcer is not None:
        log.info("IAM enforced (%s): calls not signed by the sandbox's own keys obey their IAM policies",
                 iam_enforce.ENV)
    app = SandboxMiddleware(DomainDispatcherApplication(create_backend_app), controller, enforcer)
    server = make_server(args.host, args.port, app, threaded=True)
    controller.start()

    def shutdown(signum: int, frame: FrameType | None) -> None:
        log.info("signal %s: shutting down", signum)
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)
    log.info("sandbox AWS endpoint on http://%s:%s", args.host, args.port)
    try:
        server.serve_forever()
    finally:
        controller.stop()
        server.server_close()
        if args.state_dir:
            (Path(args.state_dir) / "server.pid").unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
