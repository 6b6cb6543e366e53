"""Multi-process training on CPUs (gloo), the counterpart of Detectron2's ``launch``.

Detectron2 v0.6's ``launch`` always uses NCCL and CUDA devices. ``launch_cpu`` spawns
``num_processes`` workers per machine that join a gloo process group, so DDP code paths
(gradient all-reduce, statistics all-reduce, distributed evaluation) run without a GPU.
"""
import logging
from datetime import timedelta

import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.engine.launch import _find_free_port
from detectron2.utils import comm

__all__ = ["launch_cpu"]


def launch_cpu(main_func, num_processes, dist_url="auto", args=(), num_machines=1, machine_rank=0, timeout=timedelta(minutes=30)):
    world_size = num_machines * num_processes
    if world_size == 1:
        return main_func(*args)
    if dist_url in (None, "auto"):
        if num_machines != 1:
            raise ValueError("dist_url=auto works on one machine only; pass --dist-url tcp://HOST:PORT")
        dist_url = "tcp://127.0.0.1:%d" % _find_free_port()
    mp.spawn(
        _worker,
        nprocs=num_processes,
        args=(main_func, world_size, num_processes, machine_rank, dist_url, args, timeout),
        daemon=False,
    )


def _worker(local_rank, main_func, world_size, num_processes, machine_rank, dist_url, args, timeout):
    rank = machine_rank * num_processes + local_rank
    try:
        dist.init_process_group("gloo", init_method=dist_url, world_size=world_size, rank=rank, timeout=timeout)
    except Exception:
        logging.getLogger(__name__).error("process group URL: %s", dist_url)
        raise
    num_machines = world_size // num_processes
    for i in range(num_machines):
        pg = dist.new_group(list(range(i * num_processes, (i + 1) * num_processes)))
        if i == machine_rank:
            comm._LOCAL_PROCESS_GROUP = pg
    comm.synchronize()
    try:
        main_func(*args)
    finally:
        dist.destroy_process_group()
