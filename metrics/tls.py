"""TLS for the metrics endpoint: the server context, made from the node's PEM files.

The same settings prometheus_client's ``start_http_server(certfile=..., keyfile=...)``
uses (``ssl.PROTOCOL_TLS_SERVER``, the certificate chain and its key), built here
because the node serves ``/healthz`` next to ``/metrics`` on its own HTTP server
(``metrics/exporter.py``). Also called by ``appliance/config.py`` to refuse a bad file
at start, so it imports nothing from prometheus_client (pitfalls.md 2).
"""

from __future__ import annotations

import ssl

from ipc.errors import InvalidConfigError

CERT_OPTION = "metrics_tls_cert_file"
KEY_OPTION = "metrics_tls_key_file"


def server_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """A TLS 1.2+ server context; ``InvalidConfigError`` naming the option at fault."""
    for option, path in ((CERT_OPTION, cert_file), (KEY_OPTION, key_file)):
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise InvalidConfigError(f"{option}={path!r}: cannot read: {exc.strerror}") from None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert_file, key_file)
    except ssl.SSLError as exc:
        raise InvalidConfigError(
            f"{CERT_OPTION}={cert_file!r}, {KEY_OPTION}={key_file!r}: "
            f"not a PEM certificate and its matching private key ({exc.reason or exc})"
        ) from None
    return ctx
