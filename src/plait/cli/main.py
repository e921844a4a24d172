"""``plait``: serve executors and deployments, probe servers.

Heavy imports happen inside each command so ``plait --help`` and ``plait ping`` start fast.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from plait._entry import load_config_arg, run_async, serve_process, setup_logging
from plait._version import __version__

app = typer.Typer(
    name="plait",
    help="Build and serve multimodal AI pipelines: Executors, Deployments and Flows over gRPC.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"plait {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", "-v", callback=_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """plait: typed Documents, Executors, Deployments and Flows."""


def _fail(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code=1)


@contextlib.contextmanager
def _clean_errors() -> Iterator[None]:
    """A PlaitError or a config validation error ends the command with one line, not a traceback."""
    from plait.errors import PlaitError

    try:
        yield
    except (PlaitError, ValueError) as e:
        raise _fail(str(e)) from None


def _serve_blocking(orchestration: Any, banner: Callable[[Any], str]) -> None:
    """Start a Deployment or Flow, print where it serves, and block until Ctrl-C or SIGTERM."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with orchestration as running:
        typer.echo(banner(running))
        running.block(stop)


def _json_option(text: str | None, what: str) -> dict[str, Any]:
    from plait.errors import BadRequestError  # not at import: `plait --help` loads no gRPC
    from plait.wire.fields import parse_json_object

    try:
        return parse_json_object((text or "").encode(), what)
    except BadRequestError as e:
        raise _fail(e.message) from e


@app.command()
def executor(
    uses: Annotated[
        str | None,
        typer.Option(help="Executor to serve: 'package.module:Class', a class in --py-modules, or YAML."),
    ] = None,
    port: Annotated[int, typer.Option(help="Port to listen on (0: any free port).")] = 0,
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "0.0.0.0",
    name: Annotated[str, typer.Option(help="Executor name, used in logs and errors.")] = "executor",
    uses_with: Annotated[str | None, typer.Option(help="Constructor arguments as a JSON object.")] = None,
    py_modules: Annotated[
        list[str] | None,
        typer.Option("--py-modules", help="Python files or modules to import first (repeatable)."),
    ] = None,
    workspace: Annotated[str | None, typer.Option(help="Base folder for the executor's workspace.")] = None,
    allow_concurrent: Annotated[
        bool, typer.Option(help="Run sync endpoints concurrently instead of one at a time.")
    ] = False,
    max_message_size: Annotated[int | None, typer.Option(help="Largest request accepted, in bytes.")] = None,
    grace_period: Annotated[float, typer.Option(help="Seconds in-flight requests get on SIGTERM.")] = 10.0,
    config: Annotated[
        str | None,
        typer.Option(
            help="A serialized replica config (JSON text or a .json/.yml file); replaces the flags."
        ),
    ] = None,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING or ERROR.")] = "INFO",
) -> None:
    """Serve one Executor over gRPC until SIGTERM or Ctrl-C."""
    from plait.config import ExecutorConfig, ReplicaConfig
    from plait.serve import serve_replica

    setup_logging(log_level)
    with _clean_errors():
        if config:
            replica = load_config_arg(config, ReplicaConfig)
        else:
            if not uses:
                raise _fail("pass --uses (or --config)")
            fields: dict[str, Any] = {
                "uses": uses,
                "uses_with": _json_option(uses_with, "--uses-with"),
                "py_modules": tuple(py_modules or ()),
                "name": name,
                "workspace": workspace,
                "allow_concurrent": allow_concurrent,
            }
            extra: dict[str, Any] = {"grace_period": grace_period}
            if max_message_size:
                extra["max_message_size"] = max_message_size
            replica = ReplicaConfig(executor=ExecutorConfig(**fields), host=host, port=port, **extra)
        run_async(serve_replica(replica))


@app.command()
def deployment(
    uses: Annotated[
        Path, typer.Option(help="Deployment YAML (jtype: Deployment).", exists=True, dir_okay=False)
    ],
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING or ERROR.")] = "INFO",
) -> None:
    """Serve a Deployment described in YAML until Ctrl-C or SIGTERM."""
    from plait.orchestrate import Deployment

    setup_logging(log_level)
    with _clean_errors():
        _serve_blocking(
            Deployment.load_config(uses), lambda dep: f"deployment serving on {dep.host}:{dep.port}"
        )


@app.command()
def gateway(
    config: Annotated[
        str, typer.Option(help="A serialized gateway config (JSON text or a .json/.yml file).")
    ],
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING or ERROR.")] = "INFO",
) -> None:
    """Serve a Flow's gateway (started by `plait flow`, Docker Compose or Kubernetes)."""

    setup_logging(log_level)
    with _clean_errors():
        serve_process("gateway", config)


@app.command()
def flow(
    uses: Annotated[Path, typer.Option(help="Flow YAML (jtype: Flow).", exists=True, dir_okay=False)],
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING or ERROR.")] = "INFO",
) -> None:
    """Serve a Flow described in YAML until Ctrl-C or SIGTERM."""
    from plait.orchestrate import Flow

    def banner(f: Flow) -> str:
        where = ", ".join(
            f"{p}://{f.config.host}:{port}" for p, port in zip(f.protocols, f.ports, strict=True)
        )
        return f"flow serving on {where}"

    setup_logging(log_level)
    with _clean_errors():
        _serve_blocking(Flow.load_config(uses), banner)


@app.command()
def ping(
    target: Annotated[str, typer.Argument(help="HOST:PORT of an executor or gateway.")],
    timeout: Annotated[float, typer.Option(help="Seconds to wait for each attempt.")] = 3.0,
    attempts: Annotated[int, typer.Option(help="How many times to try before giving up.")] = 1,
    tls: Annotated[bool, typer.Option(help="Connect with TLS (also: a grpcs:// target).")] = False,
    ca_file: Annotated[str | None, typer.Option(help="PEM CA to trust instead of the system's.")] = None,
    cert_file: Annotated[str | None, typer.Option(help="Client certificate (mutual TLS).")] = None,
    key_file: Annotated[str | None, typer.Option(help="Key of --cert-file.")] = None,
    server_name: Annotated[
        str | None, typer.Option(help="Name to expect in the server's certificate (default: HOST).")
    ] = None,
    any_server_name: Annotated[
        bool,
        typer.Option(
            help="Accept whatever name the server's certificate carries, once the certificate checks "
            "out against --ca-file (which may be that certificate itself): a probe on 127.0.0.1 of a "
            "server whose certificate names its public host."
        ),
    ] = False,
) -> None:
    """Check that a plait server is up and SERVING; exit code 1 when it is not. Health needs no
    token; a server under mutual TLS (an executor) needs --ca-file, --cert-file and --key-file."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    tls = tls or any_server_name or target.startswith("grpcs://") or bool(ca_file or cert_file)
    credentials = None
    if tls:
        from plait.security.tls import grpc_channel_credentials

        with _clean_errors():
            credentials = grpc_channel_credentials(ca_file, cert_file, key_file)
    address = target.split("://", 1)[-1]
    if ":" not in address:
        raise _fail(f"target {target!r} must be HOST:PORT")
    status = "UNREACHABLE"
    for attempt in range(max(1, attempts)):
        if attempt:
            time.sleep(min(1.0, timeout))
        if credentials and any_server_name and not server_name:
            server_name = _certificate_name(address, ca_file, cert_file, key_file, timeout)
        override = [("grpc.ssl_target_name_override", server_name)] if server_name else []
        channel = (
            grpc.secure_channel(address, credentials, options=override)
            if credentials
            else grpc.insecure_channel(address)
        )
        with channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=""), timeout=timeout, wait_for_ready=True
                )
                status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            except grpc.RpcError as e:
                status = f"UNREACHABLE ({e.code().name})"
        if status == "SERVING":
            typer.echo(f"{address} is SERVING")
            return
    typer.secho(f"{address} is {status}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=1)


def _certificate_name(
    address: str, ca_file: str | None, cert_file: str | None, key_file: str | None, timeout: float
) -> str | None:
    """A name the certificate of the server at ``address`` carries, read over a TLS connection that
    checks the certificate against ``ca_file`` but not its name; None when that fails (the gRPC
    attempt then reports why)."""
    import socket
    import ssl

    from plait.errors import PlaitError
    from plait.security.tls import client_ssl_context

    host, _, port = address.rpartition(":")
    try:
        context = client_ssl_context(ca_file, cert_file, key_file)
        context.check_hostname = False
        context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN  # a server's own certificate as the CA
        context.set_alpn_protocols(["h2"])
        with (
            socket.create_connection((host.strip("[]"), int(port)), timeout=timeout) as raw,
            context.wrap_socket(raw) as connection,
        ):
            certificate: dict[str, Any] = dict(connection.getpeercert() or {})
    except (OSError, ValueError, PlaitError):
        return None
    alternatives = [(str(kind), str(value)) for kind, value in certificate.get("subjectAltName", ())]
    dns = [value for kind, value in alternatives if kind == "DNS"]
    exact = [value for value in dns if not value.startswith("*.")]
    if exact or dns:
        # A wildcard (*.example.com) matches any one label in its place.
        return exact[0] if exact else "probe" + dns[0][1:]
    addresses = [value for kind, value in alternatives if kind == "IP Address"]
    if addresses:
        return addresses[0]
    common = [
        str(value) for rdn in certificate.get("subject", ()) for key, value in rdn if key == "commonName"
    ]
    return common[0] if common else None


export_app = typer.Typer(
    name="export",
    help="Write the Kubernetes objects or the Docker Compose file that run a Flow.",
    no_args_is_help=True,
)
app.add_typer(export_app)


def _flow_for_export(source: Path) -> Any:
    from plait.orchestrate import Flow

    return Flow.load_config(source, quiet=True)


@export_app.command("kubernetes")
def export_kubernetes(
    flow_yml: Annotated[Path, typer.Argument(help="Flow YAML.", exists=True, dir_okay=False)],
    output_dir: Annotated[Path, typer.Argument(help="Folder for the YAML files (created if missing).")],
    namespace: Annotated[
        str | None, typer.Option(help="Namespace of every object (default: the Flow's name).")
    ] = None,
    image: Annotated[str | None, typer.Option(help="Image of executors that name no `image`.")] = None,
    gateway_image: Annotated[str | None, typer.Option(help="Image of the gateway.")] = None,
    gateway_replicas: Annotated[int, typer.Option(help="Gateway pods.")] = 1,
    gateway_service_type: Annotated[
        str, typer.Option(help="ClusterIP, NodePort or LoadBalancer: how the gateway is exposed.")
    ] = "ClusterIP",
    secret: Annotated[
        list[str] | None,
        typer.Option(
            "--secret", help="A Secret whose keys every container gets as environment variables (repeatable)."
        ),
    ] = None,
    monitoring: Annotated[
        bool, typer.Option(help="Every process serves Prometheus /metrics (on by default in exports).")
    ] = True,
    monitoring_port: Annotated[int, typer.Option(help="In-container port of /metrics.")] = 9090,
    tls_secret: Annotated[
        str,
        typer.Option(help="Secret with the gateway's certificate and key (keys tls.crt, tls.key), if TLS."),
    ] = "plait-tls",
    internal_tls_secret: Annotated[
        str,
        typer.Option(
            help="Secret with the mutual-TLS files (keys ca.crt, tls.crt, tls.key), if internal_tls."
        ),
    ] = "plait-internal-tls",
) -> None:
    """Write the Kubernetes objects that run a Flow (apply with `kubectl apply -f OUTPUT_DIR`).

    A Namespace; per executor shard a Deployment, a headless Service and a ConfigMap with its
    config; the same for the gateway.
    """
    options: dict[str, Any] = {
        "gateway_replicas": gateway_replicas,
        "gateway_service_type": gateway_service_type,
        "env_from_secrets": tuple(secret or ()),
        "monitoring": monitoring,
        "monitoring_port": monitoring_port,
        "tls_secret": tls_secret,
        "internal_tls_secret": internal_tls_secret,
    }
    options.update({k: v for k, v in (("image", image), ("gateway_image", gateway_image)) if v})
    with _clean_errors():
        flow = _flow_for_export(flow_yml)
        paths = flow.to_kubernetes_yaml(output_dir, namespace, base_dir=flow_yml.resolve().parent, **options)
    for path in paths:
        typer.echo(str(path))


@export_app.command("docker-compose")
def export_docker_compose(
    flow_yml: Annotated[Path, typer.Argument(help="Flow YAML.", exists=True, dir_okay=False)],
    output_file: Annotated[Path, typer.Argument(help="Compose file to write.")] = Path("docker-compose.yml"),
    network_name: Annotated[str, typer.Option(help="The bridge network every service joins.")] = "plait",
    image: Annotated[str | None, typer.Option(help="Image of executors that name no `image`.")] = None,
    gateway_image: Annotated[str | None, typer.Option(help="Image of the gateway.")] = None,
    env_file: Annotated[
        list[str] | None,
        typer.Option("--env-file", help="A KEY=VALUE file every service reads (repeatable)."),
    ] = None,
    monitoring: Annotated[
        bool, typer.Option(help="Every process serves Prometheus /metrics (on by default in exports).")
    ] = True,
    monitoring_port: Annotated[int, typer.Option(help="In-container port of /metrics.")] = 9090,
) -> None:
    """Write a Docker Compose file that runs a Flow (run with `docker compose -f OUTPUT_FILE up`).

    One service per executor replica and shard, plus the gateway.
    """
    options: dict[str, Any] = {
        "env_files": tuple(env_file or ()),
        "monitoring": monitoring,
        "monitoring_port": monitoring_port,
    }
    options.update({k: v for k, v in (("image", image), ("gateway_image", gateway_image)) if v})
    with _clean_errors():
        flow = _flow_for_export(flow_yml)
        path = flow.to_docker_compose_yaml(
            output_file, network_name, base_dir=flow_yml.resolve().parent, **options
        )
    typer.echo(str(path))


def main() -> None:
    app()
