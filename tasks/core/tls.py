"""TLS contexts the process shares: loading a trust store costs tens of milliseconds of CPU.

The verification checks (hundreds a release) and each hold's heartbeat client (tasks/release/locks.py)
take theirs here, one per trust store and its version, shared between connections and threads.
"""

from __future__ import annotations

import os
import ssl
from typing import Any

import httpx

_TLS: dict[tuple[Any, ...], ssl.SSLContext] = {}


def tls_context(ca_bundle: str | None) -> ssl.SSLContext:
    """A context trusting CA_BUNDLE's CAs, or httpx's default trust (certifi, or SSL_CERT_FILE /
    SSL_CERT_DIR) when None. A bundle rewritten in place (a rotated CA) is read again, as it is keyed by
    its size and modification time.
    """
    if ca_bundle is None:
        key: tuple[Any, ...] = (None, os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))
    else:
        stat = os.stat(ca_bundle)
        key = (ca_bundle, stat.st_size, stat.st_mtime_ns)
    context = _TLS.get(key)
    if context is None:
        context = _TLS[key] = (httpx.create_ssl_context() if ca_bundle is None
                               else ssl.create_default_context(cafile=ca_bundle))
    return context
