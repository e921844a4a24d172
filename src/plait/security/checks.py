"""Start-up checks: a gateway reads its certificates and tokens before it serves anything."""

from __future__ import annotations

import logging

from plait.config import ServerOptions
from plait.security.auth import authenticator_for
from plait.security.tls import check_server_files

log = logging.getLogger("plait.security")


def check_security(options: ServerOptions) -> None:
    """Read the TLS files and the tokens the options name (ConfigError naming what is wrong), and
    log what protects the gateway, never a secret."""
    if options.ssl_certfile is not None and options.ssl_keyfile is not None:
        check_server_files(options.ssl_certfile, options.ssl_keyfile)
    authenticator = authenticator_for(options)
    log.info(
        "gateway security: TLS %s; authentication %s",
        "on" if options.tls else "off",
        authenticator if authenticator is not None else "off",
    )
