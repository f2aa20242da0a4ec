"""Command line of every node: ``python -m <node package> [options]``.

Exit codes: 0 after SIGTERM/SIGINT (graceful stop), 1 for a fatal error (bad
contract, port in use), 2 for bad arguments, 3 when this runtime's version is
outside the contract's ``runtime.version`` range: the image must change, so
the message also goes to the Kubernetes termination log.
"""

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import get_args
from uuid import UUID

import omninode_runtime

from .contract import RuntimeVersionError
from .logs import LogFormat, configure_logging, log_event
from .models import ModelNodeSettings
from .node import NodeRuntime
from .server import NodeHttpServer
from .tracecontext import trace_scope

EXIT_OK, EXIT_FATAL, EXIT_USAGE, EXIT_RUNTIME_VERSION = 0, 1, 2, 3
STOP_TIMEOUT_S = 4.0
TERMINATION_LOG_ENV = "OMNINODE_TERMINATION_LOG"
DEFAULT_TERMINATION_LOG = "/dev/termination-log"

_logger = logging.getLogger("omninode_runtime.cli")


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The node's argument parser (environment variables give some defaults)."""
    parser = argparse.ArgumentParser(prog=prog, description="Run an ONEX node.")
    parser.add_argument(
        "--port", type=int, default=8080, help="HTTP port (0: a free one)"
    )
    parser.add_argument("--host", default="0.0.0.0", help="interface to bind")
    parser.add_argument(
        "--kafka-servers",
        default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or None,
        help="Kafka bootstrap servers (default: $KAFKA_BOOTSTRAP_SERVERS)",
    )
    parser.add_argument("--skip-event-bus", action="store_true", help="never use Kafka")
    parser.add_argument(
        "--consumer-group",
        default=os.environ.get("OMNINODE_CONSUMER_GROUP") or None,
        help="consumer group of the command topic (default: the node's name, "
        "so that its replicas share the commands)",
    )
    parser.add_argument("--node-id", type=UUID, default=None, help="instance UUID")
    parser.add_argument(
        "--replica",
        default=os.environ.get("HOSTNAME") or None,
        help="replica name, part of the stable node id (default: $HOSTNAME)",
    )
    parser.add_argument(
        "--advertised-host",
        default=os.environ.get("NODE_ADVERTISED_HOST")
        or os.environ.get("POD_IP")
        or None,
        help="host in announced URLs (default: $NODE_ADVERTISED_HOST or $POD_IP)",
    )
    parser.add_argument(
        "--log-format",
        choices=get_args(LogFormat),
        default="json",
        help="log line format",
    )
    parser.add_argument(
        "--log-level",
        type=str.upper,
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        default=(os.environ.get("LOG_LEVEL") or "INFO").upper(),
    )
    return parser


def settings_from_args(args: argparse.Namespace) -> ModelNodeSettings:
    """Node settings for the parsed command line."""
    values: dict[str, object] = {
        "host": args.host,
        "port": args.port,
        "kafka_servers": args.kafka_servers,
        "skip_event_bus": args.skip_event_bus,
        "consumer_group": args.consumer_group,
        "node_id": args.node_id,
        "advertised_host": args.advertised_host,
    }
    if args.replica:
        values["replica"] = args.replica
    return ModelNodeSettings.model_validate(values)


def report_runtime_mismatch(message: str) -> None:
    """Say why on stderr and, in Kubernetes, in the pod's termination message."""
    print(message, file=sys.stderr, flush=True)
    path = Path(os.environ.get(TERMINATION_LOG_ENV) or DEFAULT_TERMINATION_LOG)
    if path.is_file() and os.access(path, os.W_OK):
        with contextlib.suppress(OSError):
            path.write_text(message + "\n", encoding="utf-8")


def main(node_class: type[NodeRuntime], argv: Sequence[str] | None = None) -> int:
    """Run ``node_class`` until SIGTERM/SIGINT; the process exit code."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    configure_logging(args.log_format, args.log_level)
    try:
        node = node_class(settings_from_args(args))
    except RuntimeVersionError as exc:
        report_runtime_mismatch(str(exc))
        return EXIT_RUNTIME_VERSION
    except Exception as exc:
        return fatal(exc)
    try:
        return asyncio.run(serve(node, args.host, args.port))
    except KeyboardInterrupt:
        return EXIT_OK
    except Exception as exc:
        _logger.debug("fatal error", exc_info=True)
        return fatal(exc)


def fatal(exc: Exception) -> int:
    """Log ``exc`` as the reason the node cannot run; the exit code for it."""
    log_event(
        _logger, logging.CRITICAL, "fatal_error", error=f"{type(exc).__name__}: {exc}"
    )
    return EXIT_FATAL


async def serve(node: NodeRuntime, host: str, port: int) -> int:
    """Serve HTTP and run ``node`` until a stop signal; the exit code."""
    loop = asyncio.get_running_loop()
    try:
        server = NodeHttpServer(
            (host, port), node, loop, node.settings.process_timeout_s
        )
    except OSError as exc:
        log_event(
            _logger,
            logging.CRITICAL,
            "fatal_error",
            error=f"cannot listen on {host}:{port}: {exc}",
        )
        return EXIT_FATAL
    node.port = server.port
    stop = asyncio.Event()
    signals = (signal.SIGTERM, signal.SIGINT)
    for signum in signals:
        loop.add_signal_handler(signum, stop.set)
    server.start()
    try:
        await node.start()
        with trace_scope(node.startup_trace):
            log_event(
                _logger,
                logging.INFO,
                "node_started",
                port=server.port,
                host=host,
                node_type=node.contract.kind.value,
                runtime_version=omninode_runtime.RUNTIME_VERSION,
                event_bus=node.bus.state.value,
            )
        await stop.wait()
        log_event(_logger, logging.INFO, "node_stopping")
    finally:
        try:
            await asyncio.wait_for(node.stop(), STOP_TIMEOUT_S)
        except TimeoutError:
            log_event(
                _logger, logging.WARNING, "stop_timed_out", timeout_s=STOP_TIMEOUT_S
            )
        server.stop()
        for signum in signals:
            loop.remove_signal_handler(signum)
    log_event(_logger, logging.INFO, "node_stopped")
    return EXIT_OK
