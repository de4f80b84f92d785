"""DICOM TLS (PS3.15 B.1 "Basic TLS Secure Transport Connection Profile", BCP 195 profile B.9).

Contexts are built from ``node.tls_*`` settings: the node's certificate and key, the CA bundle that
signs peers' certificates, and whether callers must present one. TLS 1.2 is the minimum
(PS3.15 B.9, BCP 195). The same certificate identifies the gateway as a TLS client when it sends to
a destination marked ``tls``.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from common.settings import NodeSettings

__all__ = ["TLSConfigurationError", "tls_enabled", "server_context", "client_context"]


class TLSConfigurationError(ValueError):
    """The TLS settings are incomplete or the files cannot be loaded; the message names the key."""


def tls_enabled(node: NodeSettings) -> bool:
    """TLS on the listening port when a certificate is configured."""
    return bool(node.tls_certificate)


def _load_chain(ctx: ssl.SSLContext, node: NodeSettings) -> None:
    if not node.tls_private_key:
        raise TLSConfigurationError("node.tls_private_key: required when node.tls_certificate is set")
    for key in ("tls_certificate", "tls_private_key"):
        if not Path(getattr(node, key)).is_file():
            raise TLSConfigurationError(f"node.{key}: file not found: {getattr(node, key)}")
    try:
        ctx.load_cert_chain(node.tls_certificate, node.tls_private_key)
    except (ssl.SSLError, OSError) as exc:
        raise TLSConfigurationError(f"node.tls_certificate: cannot load certificate/key: {exc}") from None


def _load_ca(ctx: ssl.SSLContext, node: NodeSettings) -> None:
    if not Path(node.tls_ca_certificates).is_file():
        raise TLSConfigurationError(f"node.tls_ca_certificates: file not found: {node.tls_ca_certificates}")
    try:
        ctx.load_verify_locations(cafile=node.tls_ca_certificates)
    except (ssl.SSLError, OSError) as exc:
        raise TLSConfigurationError(f"node.tls_ca_certificates: cannot load: {exc}") from None


def server_context(node: NodeSettings) -> ssl.SSLContext | None:
    """SSL context for the listening socket, or None when TLS is off."""
    if not tls_enabled(node):
        if node.tls_require_client_certificate:
            raise TLSConfigurationError(
                "node.tls_require_client_certificate: needs node.tls_certificate (TLS is off)"
            )
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_chain(ctx, node)
    if node.tls_ca_certificates:
        _load_ca(ctx, node)
        ctx.verify_mode = ssl.CERT_REQUIRED if node.tls_require_client_certificate else ssl.CERT_OPTIONAL
    elif node.tls_require_client_certificate:
        raise TLSConfigurationError(
            "node.tls_ca_certificates: required when node.tls_require_client_certificate is true"
        )
    return ctx


def client_context(node: NodeSettings) -> ssl.SSLContext:
    """SSL context for sending to a TLS destination: verifies the destination's certificate
    against ``node.tls_ca_certificates`` (system store when empty) and presents the node's
    certificate when one is configured. Host names are not checked: PACS certificates rarely name
    the address they are reached by; the CA is the trust anchor (PS3.15 B.1)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    if node.tls_ca_certificates:
        _load_ca(ctx, node)
    else:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if node.tls_certificate:
        _load_chain(ctx, node)
    return ctx
