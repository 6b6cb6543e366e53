"""Multi-process training on CPUs (gloo), the counterpart of Detectron2's ``launch``.

Detectron2 v0.6's ``launch`` always uses NCCL and CUDA devices. :func:`launch_cpu` takes the same
arguments and spawns ``num_processes_per_machine`` workers on this machine that join one gloo process
group of ``num_machines * num_processes_per_machine`` ranks, so DDP code paths (gradient all-reduce,
statistics all-reduce, distributed evaluation) run without a GPU, on one or several machines
(``--num-machines/--machine-rank/--dist-url``, exactly as with Detectron2's ``launch``).
:func:`launch_on_device` picks one of the two from ``cfg.MODEL.DEVICE``.
"""

import logging
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.utils import comm

# detectron2.engine.launch is imported where it is used: importing detectron2.engine pulls in the
# whole trainer stack, which every spawned CPU worker would pay for before it even joins the group
DEFAULT_TIMEOUT = timedelta(minutes=30)  # = detectron2.engine.launch.DEFAULT_TIMEOUT

__all__ = ["launch_cpu", "launch_on_device", "is_cpu_device"]


def is_cpu_device(device) -> bool:
    """True for ``MODEL.DEVICE`` values that mean the CPU (``cpu``, ``cpu:0``, any case)."""
    return str(device).strip().lower().split(":")[0] == "cpu"


def _check_world(num_processes_per_machine, num_machines, machine_rank, dist_url):
    for key, value, low in (
        ("num_processes_per_machine (--num-gpus)", num_processes_per_machine, 1),
        ("num_machines (--num-machines)", num_machines, 1),
        ("machine_rank (--machine-rank)", machine_rank, 0),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError("launch: %s must be an integer >= %d, got %r" % (key, low, value))
    if machine_rank >= num_machines:
        raise ValueError(
            "launch: --machine-rank %d is out of range for --num-machines %d (ranks 0..%d)"
            % (machine_rank, num_machines, num_machines - 1)
        )
    if num_machines > 1 and (dist_url in (None, "", "auto")):
        raise ValueError(
            "launch: %d machines need a rendezvous address reachable by all of them: pass the same "
            "--dist-url tcp://HOST_OF_MACHINE_0:PORT (or file:///shared/path) on every machine"
            % num_machines
        )


def launch_cpu(
    main_func,
    num_processes_per_machine,
    num_machines=1,
    machine_rank=0,
    dist_url=None,
    args=(),
    timeout=DEFAULT_TIMEOUT,
):
    """Run ``main_func(*args)`` in ``num_processes_per_machine`` gloo CPU processes on this machine.

    Arguments as Detectron2's ``launch``. Call it on every machine with the same ``num_machines`` and
    ``dist_url`` and this machine's ``machine_rank``; global rank = machine_rank * per-machine + local
    rank. A world of one process runs ``main_func`` in this process without a process group; any larger
    world (also one process on each of several machines) spawns workers that join the group.
    ``dist_url`` ``"auto"`` (one machine only) picks a free local port.
    """
    _check_world(num_processes_per_machine, num_machines, machine_rank, dist_url)
    world_size = num_machines * num_processes_per_machine
    if world_size == 1:
        return main_func(*args)
    if dist_url in (None, "", "auto"):
        from ..compat import find_free_port

        dist_url = "tcp://127.0.0.1:%d" % find_free_port()
    if num_machines > 1 and dist_url.startswith("file://"):
        logging.getLogger(__name__).warning(
            "file:// is not a reliable init_method across machines; prefer tcp://"
        )
    mp.spawn(
        _worker,
        nprocs=num_processes_per_machine,
        args=(
            main_func,
            world_size,
            num_processes_per_machine,
            machine_rank,
            dist_url,
            args,
            timeout,
        ),
        daemon=False,
    )


def launch_on_device(
    device,
    main_func,
    num_processes_per_machine,
    num_machines=1,
    machine_rank=0,
    dist_url=None,
    args=(),
    timeout=DEFAULT_TIMEOUT,
):
    """:func:`launch_cpu` when ``device`` (``cfg.MODEL.DEVICE`` of the merged config) is the CPU, else
    Detectron2's ``launch`` (NCCL, one process per GPU). A CUDA device on a machine without CUDA is a
    clear error instead of Detectron2's bare ``cuda is not available`` assertion in every worker."""
    if is_cpu_device(device):
        return launch_cpu(
            main_func,
            num_processes_per_machine,
            num_machines,
            machine_rank,
            dist_url,
            args,
            timeout,
        )
    if str(device).lower().startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(
            "MODEL.DEVICE is %r but CUDA is not available on this machine: set MODEL.DEVICE cpu in the config "
            "file or on the command line (--num-gpus N then starts N CPU processes with gloo)"
            % (device,)
        )
    _check_world(num_processes_per_machine, num_machines, machine_rank, dist_url)
    from detectron2.engine.launch import launch as launch_cuda

    return launch_cuda(
        main_func,
        num_processes_per_machine,
        num_machines=num_machines,
        machine_rank=machine_rank,
        dist_url=dist_url,
        args=args,
        timeout=timeout,
    )


def _worker(
    local_rank,
    main_func,
    world_size,
    num_processes_per_machine,
    machine_rank,
    dist_url,
    args,
    timeout,
):
    rank = machine_rank * num_processes_per_machine + local_rank
    try:
        dist.init_process_group(
            "gloo", init_method=dist_url, world_size=world_size, rank=rank, timeout=timeout
        )
    except Exception:
        logging.getLogger(__name__).error(
            "process group URL: %s (rank %d of %d)", dist_url, rank, world_size
        )
        raise
    # the local process group (ranks on this machine), as Detectron2's launch builds it
    num_machines = world_size // num_processes_per_machine
    for i in range(num_machines):
        pg = dist.new_group(
            list(range(i * num_processes_per_machine, (i + 1) * num_processes_per_machine))
        )
        if i == machine_rank:
            comm._LOCAL_PROCESS_GROUP = pg
    comm.synchronize()
    try:
        main_func(*args)
    finally:
        dist.destroy_process_group()
