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
    loss = ContrastiveLoss(MeanP(), reduction)(
        {"text": Embeddings(t), "video": Embeddings(v), "logit_scale": torch.tensor(20.0)}
    )
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
    rows = (
        -(2 - torch.logsumexp(torch.tensor([2.0, 0.0]), 0)) - (3 - torch.logsumexp(torch.tensor([1.0, 3.0]), 0))
    ) / 2
    cols = (
        -(2 - torch.logsumexp(torch.tensor([2.0, 1.0]), 0)) - (3 - torch.logsumexp(torch.tensor([0.0, 3.0]), 0))
    ) / 2
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


# ---- the authors' gradient scale (train.gather_grad_world) ------------------------------------------
MAX_NORM, LR = 0.05, 0.01


class Towers(torch.nn.Module):
    """Two linear towers and a learned logit scale: the shape of a contrastive model's gradients."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.text, self.video = torch.nn.Linear(12, E), torch.nn.Linear(12, E)
        self.logit_scale = torch.nn.Parameter(torch.tensor(3.0))

    def forward(self, text_in, video_in):
        norm = torch.nn.functional.normalize
        return {
            "text": Embeddings(norm(self.text(text_in), dim=-1)),
            "video": Embeddings(norm(self.video(video_in), dim=-1)),
            "logit_scale": self.logit_scale.exp(),
        }


class AuthorsGather(torch.autograd.Function):
    """STAN's GatherLayer / CLIP4Clip's AllGather, written out: all_gather forward; backward keeps
    the gradient of this process's own rows only."""

    @staticmethod
    def forward(ctx, x):
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        ctx.rows = x.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad):
        rank = dist.get_rank()
        return grad[rank * ctx.rows : (rank + 1) * ctx.rows]


def authors_step(text_in, video_in):
    """The authors' step on one of W processes: their gather, DDP's average, clip_grad_norm_, AdamW."""
    model = Towers()
    out = model(text_in, video_in)
    t, v = AuthorsGather.apply(out["text"].x), AuthorsGather.apply(out["video"].x)
    symmetric_infonce(out["logit_scale"] * t @ v.t(), "sum").backward()
    for p in model.parameters():  # what DDP does: the mean over processes
        dist.all_reduce(p.grad)
        p.grad /= dist.get_world_size()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_NORM)
    torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0).step()
    return norm, [p.detach() for p in model.parameters()]


def mugstan_step(text_in, video_in, gather_grad_world):
    """mugstan's step: DDP, mugstan's gather (full-batch gradient), engine.train.optimizer_step."""
    from types import SimpleNamespace

    from mugstan.config import TrainConfig
    from mugstan.engine.train import optimizer_step

    model = Towers()
    wrapped = torch.nn.parallel.DistributedDataParallel(model)
    ContrastiveLoss(MeanP(), "sum")(wrapped(text_in, video_in)).backward()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
    run = SimpleNamespace(
        model=model,
        optimizer=optimizer,
        scaler=None,
        gradcache=False,
        text_frozen_steps=0,
        scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0),
        cfg=SimpleNamespace(train=TrainConfig(grad_clip=MAX_NORM, gather_grad_world=gather_grad_world)),
    )
    norm = optimizer_step(run, 0)
    return norm, [p.detach() for p in model.parameters()]


def clip_worker(rank, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    text, video = data()
    local = slice(rank * N // WORLD, (rank + 1) * N // WORLD)
    result = {
        "authors": authors_step(text[local], video[local]),
        "faithful": mugstan_step(text[local], video[local], WORLD),
        "full": mugstan_step(text[local], video[local], 1),
    }
    torch.save(result, os.path.join(out_dir, f"clip{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()


def test_gather_grad_world_steps_as_the_authors_gather(tmp_path):
    """One clipped AdamW step on 2 gloo processes: mugstan with train.gather_grad_world=2 gives the
    authors' weights (their gather keeps the local rows: towers at 1/W, logit scale in full); with
    the full gradient (1) the clip binds harder and the weights differ."""
    mp.spawn(clip_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    for rank in range(WORLD):
        r = torch.load(tmp_path / f"clip{rank}.pt")
        (authors_norm, authors), (norm, faithful), (full_norm, full) = r["authors"], r["faithful"], r["full"]
        assert float(authors_norm) > MAX_NORM  # the clip binds in the authors' step too
        assert norm == pytest.approx(float(authors_norm), rel=1e-5)
        for a, b in zip(authors, faithful, strict=True):
            torch.testing.assert_close(b, a)
        assert full_norm > norm * 1.5  # the towers' full gradient is W x the authors'
        assert not all(torch.allclose(a, b) for a, b in zip(authors, full, strict=True))
