"""Run by test_cross_pool_gather.py: ``PretrainModel.forward`` with the cross-attention pool in 2 gloo processes
vs 1 process on the same global batch; writes a JSON result.

The cross pool builds every (image, text) pair, so the model gathers the patch tokens, the text tokens and the
ids (text row, study) of every process before the loss (``gather_ids`` in ``forward``). Each rank holds half of
a global batch whose duplicates (a shared text row, a shared study) sit across the ranks: the contrastive loss
on each rank must equal the 1-process loss on the whole batch, the rank-averaged gradient of the text
projection (what DDP applies) must equal the 1-process gradient, and the loss must differ from the loss
without ids (the duplicates matter).
"""

from __future__ import annotations

import json
import os
import sys

import torch
import torch.distributed as dist

WORLD, N, L, HIDDEN = 2, 8, 6, 24
# (text row, study): items 1 (rank 0) and 6 (rank 1) share a text row, 3 (rank 0) and 4 (rank 1) one study
IDS = torch.tensor([[0, 0], [1, 1], [2, 2], [3, 3], [4, 3], [5, 5], [1, 6], [7, 7]])


def _model():
    from cxrpipe.config import build
    from cxrpipe.pretrain.losses import LossConfig
    from cxrpipe.pretrain.mae import MAEConfig
    from cxrpipe.pretrain.model import PretrainModel
    from cxrpipe.pretrain.pooling import PoolConfig

    sys.path.insert(0, os.path.dirname(__file__))
    from synthetic import TINY

    torch.manual_seed(0)  # the same init on every rank
    model = PretrainModel(build(MAEConfig, TINY["model"]), build(PoolConfig, {**TINY["pool"], "kind": "cross"}),
                          build(LossConfig, {"kind": "margin"}), text_hidden=HIDDEN)
    return model.train()


def _inputs():
    g = torch.Generator().manual_seed(1)
    images = torch.randn(N, 1, 32, 32, generator=g)
    text = torch.randn(N, L, HIDDEN, generator=g)
    mask = torch.ones(N, L, dtype=torch.bool)
    mask[N // 2:, 4:] = False  # rank 1's reports are shorter: the gather must re-pad them
    mask[2, 3:] = False
    noise = torch.rand(N, 16, generator=g)  # 16 patches: the same masks in both runs
    return images, text, mask, noise


def _run(model, sl, length, ids=True):
    images, text, mask, noise = _inputs()
    out = model(images[sl], text[sl, :length], mask[sl, :length], noise=noise[sl], ids=IDS[sl] if ids else None)
    return out["contrastive_loss"]


def single() -> dict:
    model = _model()
    loss = _run(model, slice(0, N), L)
    loss.backward()
    with torch.no_grad():
        no_ids = _run(model, slice(0, N), L, ids=False).item()
    return {"loss": loss.item(), "grad": model.text_proj.proj.weight.grad.clone(), "loss_no_ids": no_ids}


def worker(rank: int, port: str, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    model = _model()
    sl = slice(rank * N // WORLD, (rank + 1) * N // WORLD)
    _, _, mask, _ = _inputs()
    loss = _run(model, sl, int(mask[sl].sum(1).max()))  # each rank trims its text to its longest report
    loss.backward()
    queue.put((rank, loss.item(), model.text_proj.proj.weight.grad.tolist()))  # plain data: no shared memory
    dist.barrier()
    dist.destroy_process_group()


def main(path: str) -> None:
    from dist_worker import run_ranks  # this folder is on sys.path: the script's own

    results = sorted(run_ranks(worker, WORLD))
    ref = single()
    mean_grad = sum(torch.tensor(g) for _, _, g in results) / WORLD  # DDP averages the ranks' gradients
    report = {"world": WORLD, "loss_single": ref["loss"], "loss_no_ids": ref["loss_no_ids"],
              "loss_ranks": [loss for _, loss, _ in results],
              "max_grad_error": float((mean_grad - ref["grad"]).abs().max()),
              "grad_scale": float(ref["grad"].abs().max())}
    with open(path, "w") as f:
        json.dump(report, f, indent=2)


if __name__ == "__main__":
    main(sys.argv[1])
