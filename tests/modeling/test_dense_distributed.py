"""Two CPU processes (gloo): FCOS with dense EQL v2 keeps identical, all-reduced statistics on both ranks
and BOFL's lambda is the same on both (it depends on the iteration only)."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _worker(rank, out_dir):
    # file:// rendezvous: no TCP port that another test could grab in between
    dist.init_process_group(
        "gloo", init_method="file://" + os.path.join(out_dir, "rendezvous"), rank=rank, world_size=2
    )
    torch.set_num_threads(1)
    from detectron2.utils.events import EventStorage

    from lt_detectron.utils.testing import build_tiny_dense, tiny_dense_inputs

    model = build_tiny_dense("FCOS", "eqlv2", seed=0)
    model.train()
    for it in range(2):
        with EventStorage(it):
            losses = model(tiny_dense_inputs(n=1, seed=10 * rank + it))  # different data per rank
        sum(losses.values()).backward()
    bofl = build_tiny_dense("FCOS", "bofl")
    torch.save(
        {
            "buffers": {k: v for k, v in model.state_dict().items() if k.startswith("cls_loss.")},
            "lam": [bofl.cls_loss.current_lambda(i) for i in (0, 19, 20, 35)],
        },
        os.path.join(out_dir, "rank%d.pt" % rank),
    )
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_process_eqlv2_statistics_identical(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path),), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / ("rank%d.pt" % r)) for r in (0, 1))
    assert r0["lam"] == r1["lam"] == [0.0, 0.0, 1 / 3, 2 / 3]
    assert set(r0["buffers"]) >= {"cls_loss.pos_grad", "cls_loss.neg_grad", "cls_loss.pos_neg"}
    for k, v in r0["buffers"].items():
        assert torch.equal(v, r1["buffers"][k]), k
    assert r0["buffers"]["cls_loss.pos_grad"].abs().sum() > 0
