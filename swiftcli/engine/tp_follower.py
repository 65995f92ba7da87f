"""A follower rank of the pt backend's tensor parallelism (`python -m swiftcli.engine.tp_follower`, started by
tensor_parallel.start): it builds the same engine as rank 0 and replays rank 0's steps until told to stop."""
from __future__ import annotations

import json
import logging
import os
import threading
import time

from ..arguments import EngineSetup
from ..log import setup_logging
from . import get_engine
from .tensor_parallel import WORKER_ENV

logger = logging.getLogger("swiftcli")


def _exit_with_parent(parent: int) -> None:
    """A follower whose rank 0 died (killed, crashed) would wait for its next message forever."""
    while True:
        time.sleep(1)
        try:
            os.kill(parent, 0)
        except ProcessLookupError:
            os._exit(1)


def main() -> None:
    """A follower: build the same engine (get_engine sees WORKER_ENV) and replay rank 0's steps until told to stop."""
    setup_logging()
    logger.setLevel(logging.WARNING)  # rank 0 tells the story
    threading.Thread(target=_exit_with_parent, args=(int(os.environ["SWIFT_TP_PARENT"]),), daemon=True).start()
    with open(os.environ[WORKER_ENV], encoding="utf-8") as f:
        args = EngineSetup(**json.load(f))
    engine = get_engine(args)
    engine.follow()
    import torch.distributed as dist

    dist.destroy_process_group()


if __name__ == "__main__":
    main()
