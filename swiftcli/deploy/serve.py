"""`swift deploy`: load the engine, then serve it with uvicorn until SIGTERM/Ctrl+C, which drain in-flight requests."""
from __future__ import annotations

import logging
import signal
from types import FrameType

import uvicorn

from ..arguments import DeployArguments, is_loopback
from ..engine import get_engine, print_banner, seed_everything
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
    server = uvicorn.Server(config)
    stopped_by = drain_on_signals(server)
    engine.serve(server.serve())
    if stopped_by:
        logger.info("In-flight requests drained; exiting after %s.", signal.Signals(stopped_by[0]).name)


def drain_on_signals(server: uvicorn.Server) -> list[int]:
    """SIGTERM/SIGINT make uvicorn stop accepting and drain in-flight requests; the process then exits 0 (not by
    the signal). Installed here, in the main thread, because the vLLM engine serves on its own loop's thread, where
    uvicorn installs no handlers; installed only now, so a signal during model loading still stops at once.
    Returns the list the signals received are appended to."""
    received: list[int] = []

    def handle(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        server.handle_exit(signum, frame)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handle)
    return received
