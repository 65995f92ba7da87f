"""Data-parallel `swift sft`: with NPROC_PER_NODE set, the command relaunches itself through PyTorch's elastic
launcher (the one torchrun runs), one process per GPU (nccl) or per CPU core (gloo).

    NPROC_PER_NODE=4 swift sft ...                        # 4 GPUs of this machine (CUDA_VISIBLE_DEVICES picks them)
    NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 MASTER_PORT=29500 NPROC_PER_NODE=8 swift sft ...   # on each node

Every worker trains with the same arguments (sent as a config file); the Trainer splits the batches between them.
Global rank 0 alone writes the run directory, the checkpoints and the logs.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import sys
import tempfile
from dataclasses import dataclass
from typing import Any

from ..arguments import SftArguments
from ..errors import ArgumentError, SwiftError

logger = logging.getLogger("swiftcli")


@dataclass
class LaunchPlan:
    """torchrun's settings, read from the environment as ms-swift reads them."""

    nproc_per_node: int
    nnodes: int
    node_rank: int
    master_addr: str
    master_port: int


def run_sft(args: SftArguments) -> dict[str, Any] | None:
    """Train here, or launch the worker processes that do (NPROC_PER_NODE, outside a worker)."""
    from .sft import is_main_process, train_sft

    plan = launch_plan()
    if plan is not None:
        launch(args, plan)
        return None
    if "LOCAL_RANK" in os.environ:
        logger.info("Worker rank %s of %s (local rank %s) started", os.environ.get("RANK"),
                    os.environ.get("WORLD_SIZE"), os.environ["LOCAL_RANK"])
    if is_main_process():
        return train_sft(args)
    logger.setLevel(logging.WARNING)  # rank 0 tells the story
    try:
        return train_sft(args)
    except SwiftError:  # every rank meets the same bad input: rank 0 alone prints it
        raise SystemExit(2) from None


def launch_plan() -> LaunchPlan | None:
    """The launch the environment asks for; None inside a worker (LOCAL_RANK is set) or without NPROC_PER_NODE."""
    if not os.environ.get("NPROC_PER_NODE") or "LOCAL_RANK" in os.environ:
        return None
    values = {}
    for name, default in (("NPROC_PER_NODE", None), ("NNODES", "1"), ("NODE_RANK", "0"), ("MASTER_PORT", "0")):
        text = os.environ.get(name) or default
        if not text.isdigit():
            raise ArgumentError(f"{name} must be a whole number, got {text!r}")
        values[name] = int(text)
    plan = LaunchPlan(values["NPROC_PER_NODE"], values["NNODES"], values["NODE_RANK"],
                      os.environ.get("MASTER_ADDR") or "127.0.0.1", values["MASTER_PORT"])
    check_plan(plan)
    return plan


def check_plan(plan: LaunchPlan) -> None:
    """Refuse, before any process starts, what would fail or hang in the workers."""
    import torch

    if plan.nproc_per_node < 1 or plan.nnodes < 1 or not 0 <= plan.node_rank < plan.nnodes:
        raise ArgumentError(f"NPROC_PER_NODE={plan.nproc_per_node}, NNODES={plan.nnodes}, NODE_RANK="
                            f"{plan.node_rank}: need NPROC_PER_NODE >= 1 and 0 <= NODE_RANK < NNODES")
    gpus = torch.cuda.device_count()
    devices, kind = (gpus, "GPUs (CUDA_VISIBLE_DEVICES)") if gpus else (os.cpu_count() or 1, "CPU cores")
    if plan.nproc_per_node > devices:
        raise ArgumentError(f"NPROC_PER_NODE={plan.nproc_per_node} but this machine has {devices} {kind}: "
                            "one process each at most")
    if plan.master_port == 0:
        if plan.nnodes > 1:
            raise ArgumentError("multi-node training needs MASTER_ADDR and MASTER_PORT (the same on every node)")
        plan.master_port = free_port()
    elif plan.node_rank == 0 and not port_is_free(plan.master_port):
        raise ArgumentError(f"MASTER_PORT {plan.master_port} is in use: choose a free port (or leave MASTER_PORT "
                            "unset on one machine)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("", port))
        except OSError:
            return False
    return True


def launch(args: SftArguments, plan: LaunchPlan) -> None:
    """Run `swift sft --config <these arguments>` in every worker and wait; a failed worker fails the command."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)  # failures are reported below
    world = plan.nproc_per_node * plan.nnodes
    logger.info("Launching %d processes on this node (world size %d, node %d of %d, master %s:%d)",
                plan.nproc_per_node, world, plan.node_rank, plan.nnodes, plan.master_addr, plan.master_port)
    config = LaunchConfig(min_nodes=plan.nnodes, max_nodes=plan.nnodes, nproc_per_node=plan.nproc_per_node,
                          run_id="swift-sft", rdzv_backend="static", rdzv_endpoint=f"{plan.master_addr}:"
                          f"{plan.master_port}", rdzv_configs={"rank": plan.node_rank}, max_restarts=0)
    with tempfile.NamedTemporaryFile("w", suffix=".json", prefix="swift-sft-", encoding="utf-8") as f:
        json.dump(args.saved_args(), f, ensure_ascii=False)
        f.flush()
        try:
            elastic_launch(config, entrypoint=sys.executable)("-m", "swiftcli", "sft", "--config", f.name)
        except ChildFailedError as e:
            codes = [failure.exitcode for failure in e.failures.values()]
            raise SystemExit(max(codes, default=1) if all(c > 0 for c in codes) else 1) from None
