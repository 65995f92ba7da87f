"""`swift deploy`: load the engine, then serve it with uvicorn until SIGTERM/Ctrl+C, which drain in-flight requests."""
from __future__ import annotations

import ipaddress
import logging
import signal

import uvicorn

from ..arguments import DeployArguments
from ..engine import get_engine
from ..infer import print_banner, seed_everything
from .app import create_app

logger = logging.getLogger("swiftcli")


def run_deploy(args: DeployArguments) -> None:
    if not args.api_key and not is_loopback(args.host):
        logger.warning("Binding %s without --api_key: anyone who can reach this port can use the model.", args.host)
    seed_everything(args.seed)
    engine = get_engine(args)
    print_banner(engine)
    config = uvicorn.Config(create_app(engine, args), host=args.host, port=args.port, ssl_keyfile=args.ssl_keyfile,
                            ssl_certfile=args.ssl_certfile, access_log=False, log_level="info")
    exit_zero_after_drain()
    uvicorn.Server(config).run()


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def exit_zero_after_drain() -> None:
    """uvicorn drains on SIGTERM/SIGINT, then re-raises the signal to the handler installed before it. A handler
    that returns turns that into a normal exit (code 0) instead of death by signal. Installed only now, so a signal
    during model loading still stops the process at once."""

    def drained(signum: int, frame: object) -> None:
        logger.info("In-flight requests drained; exiting after %s.", signal.Signals(signum).name)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, drained)
