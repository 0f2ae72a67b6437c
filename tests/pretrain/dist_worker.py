"""Run by test_losses.py: 2 gloo processes vs 1 process on the same global batch; writes a JSON result.

For each check, every rank holds half of a global batch of leaf features and their ids (text row, study:
duplicates within and across the ranks), computes the loss with the features and ids gathered across ranks,
and backpropagates. The loss must equal the 1-process loss on the whole
batch, and each rank's gradient divided by the world size (DDP averages gradients) must equal the matching
slice of the 1-process gradient.
"""

from __future__ import annotations

import json
import os
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

WORLD = 2
N, D = 8, 16


# (text row, study) of the 8 items: 1 and 6 share a text (rank 0 / rank 1), 2 and 3 are one study (rank 0),
# 4 and 7 share a text (rank 1 / rank 1)
IDS = torch.tensor([[0, 0], [1, 1], [2, 2], [2, 2], [4, 4], [5, 5], [1, 6], [4, 7]])


def _inputs():
    g = torch.Generator().manual_seed(0)
    u, v = torch.randn(N, D, generator=g), torch.randn(N, D, generator=g)
    # cross pool: text tokens of different lengths per rank (rank 0 longest 5, rank 1 longest 3)
    text = torch.randn(N, 5, D, generator=g)
    mask = torch.ones(N, 5, dtype=torch.bool)
    mask[N // 2 :, 3:] = False
    mask[1, 2:] = False
    patches = torch.randn(N, 6, D, generator=g)
    return u, v, text, mask, patches


def _losses():
    from cxrpipe.pretrain.losses import InfoNCELoss, MarginContrastiveLoss

    return {
        "margin": MarginContrastiveLoss(margin=1.5),
        "margin_sqdist": MarginContrastiveLoss(margin=1.5, squared_hinge=True),
        "infonce": InfoNCELoss(temperature=0.2),
    }


CROSS = {"cross": "margin", "cross_infonce": "infonce"}


def _cross_loss(text, mask, patches, ids, gather, kind="margin"):
    """The cross-attention path of PretrainModel: tokens gathered, pairs built, loss on global features."""
    from cxrpipe.pretrain.losses import gather_ids, gather_padded, gather_with_grad
    from cxrpipe.pretrain.pooling import AttentionPool, CrossAttentionPool

    torch.manual_seed(1)
    cross, tpool = CrossAttentionPool(D, D, 2), AttentionPool(D, D, 2)
    if gather:
        patches = gather_with_grad(patches)
        text = gather_padded(text, dim=1)
        mask = gather_padded(mask.to(torch.uint8), dim=1).bool()
        ids = gather_ids(ids)
    loss = _losses()[kind]
    return loss(cross(text, mask, patches), tpool(text, mask), ids=ids, gather=False)["contrastive_loss"]


def single() -> dict:
    u, v, text, mask, patches = _inputs()
    out = {}
    for name, loss in _losses().items():
        uu, vv = u.clone().requires_grad_(), v.clone().requires_grad_()
        value = loss(uu, vv, ids=IDS)["contrastive_loss"]
        value.backward()
        out[name] = (value.item(), torch.cat([uu.grad, vv.grad], 1), loss(u, v)["contrastive_loss"].item())
    for name, kind in CROSS.items():
        pp = patches.clone().requires_grad_()
        value = _cross_loss(text, mask, pp, IDS, gather=False, kind=kind)
        value.backward()
        out[name] = (value.item(), pp.grad, _cross_loss(text, mask, patches, None, False, kind).item())
    return out


def worker(rank: int, port: str, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    u, v, text, mask, patches = _inputs()
    sl = slice(rank * N // WORLD, (rank + 1) * N // WORLD)
    out = {}
    for name, loss in _losses().items():
        uu, vv = u[sl].clone().requires_grad_(), v[sl].clone().requires_grad_()
        value = loss(uu, vv, ids=IDS[sl])["contrastive_loss"]
        value.backward()
        out[name] = (value.item(), torch.cat([uu.grad, vv.grad], 1) / WORLD)
    # each rank trims its text to its own longest report: gather_padded must re-pad
    length = int(mask[sl].sum(1).max())
    for name, kind in CROSS.items():
        pp = patches[sl].clone().requires_grad_()
        value = _cross_loss(text[sl, :length], mask[sl, :length], pp, IDS[sl], gather=True, kind=kind)
        value.backward()
        out[name] = (value.item(), pp.grad / WORLD)
    queue.put((rank, {k: (l, g.tolist()) for k, (l, g) in out.items()}))  # plain data: no shared memory
    dist.barrier()
    dist.destroy_process_group()


def run_ranks(target, world: int = WORLD) -> list:
    """Spawn ``world`` processes running ``target(rank, port, queue)`` (each puts one result on the queue and
    joins a gloo group on ``port``); their results, in arrival order. Raises SystemExit if one fails."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=target, args=(r, port, queue)) for r in range(world)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=240) for _ in range(world)]
    for p in procs:
        p.join(timeout=30)
        if p.exitcode != 0:
            raise SystemExit(f"worker exited with {p.exitcode}")
    return results


def main(path: str) -> None:
    results = dict(run_ranks(worker))
    ref = single()
    report = {}
    for name, (loss, grad, loss_no_ids) in ref.items():
        errs = []
        for r in range(WORLD):
            sl = slice(r * N // WORLD, (r + 1) * N // WORLD)
            errs.append(float((torch.tensor(results[r][name][1]) - grad[sl]).abs().max()))
        report[name] = {
            "world": WORLD,
            "loss_single": loss,
            "loss_no_ids": loss_no_ids,
            "loss_ranks": [results[r][name][0] for r in range(WORLD)],
            "max_grad_error": max(errs),
        }
    with open(path, "w") as f:
        json.dump(report, f, indent=2)


if __name__ == "__main__":
    main(sys.argv[1])
