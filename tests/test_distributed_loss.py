"""The gather-based contrastive loss in 2 gloo processes equals one process over the whole batch."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mugstan.heads.base import Embeddings
from mugstan.heads.mean import MeanP
from mugstan.losses import ContrastiveLoss, symmetric_infonce

N, E, WORLD = 8, 16, 2


def data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(N, 12, generator=g), torch.randn(N, 12, generator=g)


def make_heads():
    torch.manual_seed(1)
    return torch.nn.Linear(12, E), torch.nn.Linear(12, E)


def step(text_in, video_in, heads, reduction):
    """Linear heads -> unit embeddings -> loss; returns loss, embeddings with grads, weight grads."""
    t_head, v_head = heads
    t = torch.nn.functional.normalize(t_head(text_in), dim=-1)
    v = torch.nn.functional.normalize(v_head(video_in), dim=-1)
    t.retain_grad()
    v.retain_grad()
    loss = ContrastiveLoss(MeanP(), reduction)({"text": Embeddings(t), "video": Embeddings(v), "logit_scale": torch.tensor(20.0)})
    loss.backward()
    return loss.detach(), t.grad, v.grad, t_head.weight.grad, v_head.weight.grad


def worker(rank, init_file, reduction, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    text, video = data()
    local = slice(rank * N // WORLD, (rank + 1) * N // WORLD)
    result = step(text[local], video[local], make_heads(), reduction)
    torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.barrier()  # no process may tear gloo down while the other is still talking to it
    dist.destroy_process_group()


def test_symmetric_infonce_by_hand():
    logits = torch.tensor([[2.0, 0.0], [1.0, 3.0]])
    rows = (-(2 - torch.logsumexp(torch.tensor([2.0, 0.0]), 0)) - (3 - torch.logsumexp(torch.tensor([1.0, 3.0]), 0))) / 2
    cols = (-(2 - torch.logsumexp(torch.tensor([2.0, 1.0]), 0)) - (3 - torch.logsumexp(torch.tensor([0.0, 3.0]), 0))) / 2
    torch.testing.assert_close(symmetric_infonce(logits, "mean"), (rows + cols) / 2)
    torch.testing.assert_close(symmetric_infonce(logits, "sum"), rows + cols)
    with pytest.raises(ValueError, match="'mean' or 'sum'"):
        symmetric_infonce(logits, "max")


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_two_gloo_processes_match_one(tmp_path, reduction):
    mp.spawn(worker, args=(str(tmp_path / "init"), reduction, str(tmp_path)), nprocs=WORLD, join=True)
    full = step(*data(), make_heads(), reduction)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    for loss, *_ in ranks:  # every process computes the full-batch loss
        torch.testing.assert_close(loss, full[0])
    # Documented scaling: the gather's backward sums the W identical losses, so each process's
    # embeddings get W x the full-batch gradient of its rows, and its weights W x its rows' share;
    # DDP's averaging over W processes then gives exactly the one-process gradient.
    for idx in (1, 2):
        torch.testing.assert_close(torch.cat([r[idx] for r in ranks]) / WORLD, full[idx])
    for idx in (3, 4):
        torch.testing.assert_close(sum(r[idx] for r in ranks) / WORLD, full[idx])
