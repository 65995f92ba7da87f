"""`--tensor_parallel_size N` on the pt backend: transformers' tensor-parallel plan over N processes.

The user's process is rank 0: it loads its shard of the model and runs the command (REPL, server, UI) as usual.
Ranks 1..N-1 are started here (in their own session: a terminal's Ctrl-C reaches rank 0 only), load their shards and
replay the scheduler: before each step rank 0 sends which rows join (prompt ids and settings) and which were
aborted; every rank then runs the same forward on its shard of the weights and of the KV cache and samples the same
tokens from the same logits (the plan gathers them on every rank; unseeded rows get a seed from rank 0).
Followers exit when rank 0 says so, or when rank 0 is gone.

CUDA: one GPU per rank (nccl). CPU: gloo, one process per core at most.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Any

from ..errors import ArgumentError

logger = logging.getLogger("swiftcli")

WORKER_ENV = "SWIFT_TP_WORKER"
"""Set in the followers' environment: get_engine builds the engine and hands it to `follow` instead of returning."""


@dataclass
class TpGroup:
    """This process's place in the tensor-parallel group, and the channel rank 0 steers the others through."""

    rank: int
    size: int
    channel: Any
    """A gloo process group for control messages (pickled objects), with no timeout worth meeting while idle."""
    followers: list[subprocess.Popen] = field(default_factory=list)
    """Rank 0: the processes of ranks 1..N-1."""

    def send(self, message: Any) -> None:
        """Rank 0: every follower receives `message` (None: stop)."""
        import torch.distributed as dist

        dist.broadcast_object_list([message], src=0, group=self.channel)

    def receive(self) -> Any:
        import torch.distributed as dist

        box: list[Any] = [None]
        dist.broadcast_object_list(box, src=0, group=self.channel)
        return box[0]

    def wait_followers(self, timeout: float = 30) -> None:
        """Rank 0, after sending stop: wait for ranks 1..N-1 to exit (killed after `timeout` seconds)."""
        for proc in self.followers:
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()


def check(size: int, model_dir: str, device: str, adapters: dict[str, str], trust_remote_code: bool) -> None:
    """Refuse, before any weight loads, what can't be split: more ranks than devices, an architecture without
    transformers' tensor-parallel plan, heads that don't divide by N, LoRA adapters."""
    import torch
    from transformers import AutoConfig

    if adapters:
        raise ArgumentError("--tensor_parallel_size with LoRA adapters is not supported on the pt backend: merge the "
                            "adapter first (swift export --merge_lora true)")
    devices, kind = (torch.cuda.device_count(), "GPUs") if device == "cuda" else (os.cpu_count() or 1, "CPU cores")
    if size > devices:
        raise ArgumentError(f"--tensor_parallel_size {size} but this machine has {devices} {kind}: one rank each")
    config = AutoConfig.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    text = getattr(config, "text_config", None) or config
    if not getattr(text, "base_model_tp_plan", None):
        raise ArgumentError(f"--tensor_parallel_size: transformers has no tensor-parallel plan for "
                            f"{type(config).__name__} ({getattr(config, 'model_type', '?')}); use --device_map auto "
                            "or the vllm backend")
    for name in ("num_attention_heads", "num_key_value_heads"):
        heads = getattr(text, name, None)
        if heads and heads % size:
            raise ArgumentError(f"--tensor_parallel_size {size} must divide the model's {name} ({heads})")


def start(args: Any, device: str) -> TpGroup:
    """Rank 0 (the user's process): start ranks 1..N-1 with these arguments, then join the group with them."""
    size = args.tensor_parallel_size
    port = _free_port()
    with tempfile.NamedTemporaryFile("w", suffix=".json", prefix="swift-tp-", delete=False, encoding="utf-8") as f:
        json.dump(follower_arguments(args), f, ensure_ascii=False)
    followers = []
    for rank in range(1, size):
        env = {**os.environ, **_rank_env(rank, size, port), WORKER_ENV: f.name, "SWIFT_TP_PARENT": str(os.getpid())}
        followers.append(subprocess.Popen([sys.executable, "-m", "swiftcli.engine.tp_follower"], env=env,
                                          stdin=subprocess.DEVNULL, start_new_session=True))
    os.environ.update(_rank_env(0, size, port))
    logger.info("Tensor parallel: %d processes (rank 0 here, followers %s)", size, [p.pid for p in followers])
    group = join(device)
    group.followers = followers
    os.unlink(f.name)
    return group


def join(device: str) -> TpGroup:
    """Init the process group from RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT (nccl on CUDA, gloo on CPU)."""
    import torch
    import torch.distributed as dist

    rank = int(os.environ["RANK"])
    if device == "cuda":
        torch.cuda.set_device(rank)
    dist.init_process_group(backend="nccl" if device == "cuda" else "gloo")
    channel = dist.new_group(backend="gloo", timeout=datetime.timedelta(days=365))  # idle servers wait here
    return TpGroup(rank, dist.get_world_size(), channel)


def load_kwargs(size: int) -> dict[str, Any]:
    """from_pretrained keys: each rank loads its shard (transformers places it on this rank's device)."""
    from transformers.distributed import DistributedConfig

    return {"distributed_config": DistributedConfig(tp_size=size, tp_plan="auto"), "device_map": None}


def follower_arguments(args: Any) -> dict[str, Any]:
    """The engine's arguments for the followers: the EngineSetup fields of the command's arguments."""
    from ..arguments import EngineSetup

    return {f.name: getattr(args, f.name) for f in dataclasses.fields(EngineSetup)}


def _rank_env(rank: int, size: int, port: int) -> dict[str, str]:
    return {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(size), "LOCAL_WORLD_SIZE": str(size),
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
