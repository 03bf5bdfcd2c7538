"""Learning-dynamics probe behind issue 14: the real mugstan modules, trained on in-memory clips.

    mugstan demo --out demo        # or mugstan data synth: a rendered dataset and a pretrained CLIP
    python benchmarks/synthetic_levers.py --data demo/data_v600_f8_s32_seed0 \\
        --clip demo/pretrain_clip/clip.safetensors --name base [--steps 2000] [--twin] \\
        [--unfreeze-at 0.3] [--text-lr 0.1] [--te-std 0.02] [--cfg stan] [-o train.lr=3e-3 ...]

Fine-tunes ``configs/synthetic/CFG.yaml`` (model, optimiser groups, loss, schedule) from the
pretrained CLIP on the dataset's training clips, decoded once into memory, centre-cropped to the
model's 32 px and then randomly resized-cropped as the loader does, so that dozens of variants
run in minutes; every ``--every`` steps it prints the test set's pair accuracy (a caption scores
its own video above the time-reversed twin; ties count half), text-to-video R@1 and the cosine
between the text vectors of four caption pairs that differ only in direction ("twincos": 1.0
means the text tower cannot tell them apart). Variants:

--twin            every batch holds 16 clips and the same clips reversed, with the motion word
                  swapped in their captions (the reversed twin as a hard negative);
--unfreeze-at F   the text tower's gradients are dropped for the first F of the steps
                  (what ``train.freeze_text_for`` does in the engine);
--text-lr M       the text tower's learning rate x M; --te-std S: STAN's temporal embedding
                  re-initialised with standard deviation S (default: nn.Embedding's 1.0);
--sup             diagnostic: a linear 10-way motion classifier on the video vector (x 20) in
                  place of the text tower.

The figures in benchmarks/results/synthetic_demo.md ("lever sweep") came from this script, 16
variants at a time on the GPU host (one process each, bf16 autocast), data seed 0.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from mugstan.config import load_config
from mugstan.data.synthetic import MOTION_PHRASES, MOTIONS
from mugstan.data.transforms import ClipTransform, normalize
from mugstan.data.video import read_clip
from mugstan.demo import CONFIG_DIR, twins
from mugstan.engine.optim import build_optimizer, steps_of, warmup_cosine
from mugstan.losses import build_loss
from mugstan.models import build_model


def load_split(data: Path, split: str, size: int) -> tuple[torch.Tensor, list, list]:
    """Every clip of a split, decoded and centre-cropped to ``size``: (uint8 [N, T, 3, S, S], captions, labels)."""
    records = [json.loads(line) for line in (data / f"{split}.jsonl").read_text().splitlines()]
    test_view = ClipTransform(size, train=False, uint8=True)  # resize the short side, centre crop
    clips = torch.stack([test_view(read_clip(str(data / r["video"]), 8)) for r in records])
    return clips, [r["caption"] for r in records], [r["label"] for r in records]


def reversed_caption(caption: str, motion: str) -> str:
    """The caption of the clip played backwards: its motion phrase swapped for the opposite one."""
    opposite = MOTIONS[MOTIONS.index(motion) ^ 1]
    for k, phrase in enumerate(MOTION_PHRASES[motion]):
        if caption.endswith(phrase):
            return caption[: -len(phrase)] + MOTION_PHRASES[opposite][k]
    raise ValueError(f"no motion phrase of {motion!r} ends {caption!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--data", type=Path, required=True, help="a synthetic dataset folder (mugstan data synth / demo)"
    )
    parser.add_argument(
        "--clip", type=Path, required=True, help="the pretrained CLIP (demo OUT/pretrain_clip/clip.safetensors)"
    )
    parser.add_argument("--name", default="probe")
    parser.add_argument("--cfg", default="stan", help="configs/synthetic/NAME.yaml (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--twin", action="store_true")
    parser.add_argument("--sup", action="store_true")
    parser.add_argument("--text-lr", type=float, default=1.0)
    parser.add_argument("--te-std", type=float, default=None)
    parser.add_argument("--unfreeze-at", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--every", type=int, default=200)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("-o", nargs="*", default=[], help="config overrides, key=value")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16")  # noqa: E731

    cfg = load_config(CONFIG_DIR / f"{args.cfg}.yaml", [("model.weights", str(args.clip)), *args.o], check_files=False)
    size = cfg.data.image_size
    train_x, train_c, train_l = load_split(args.data, "train", size)
    test_x, test_c, test_l = load_split(args.data, "test", size)
    twin = torch.as_tensor(twins(args.data))
    model = build_model(cfg.model).to(device).train()
    if args.te_std is not None:
        with torch.no_grad():
            model.branch.time_embed.weight.normal_(0, args.te_std)
    loss_fn = build_loss(cfg.model, model)
    classifier = (
        torch.nn.Linear(model.backbone.clip.text_projection.shape[1], len(MOTIONS)).to(device) if args.sup else None
    )
    if classifier is not None:
        model.classifier_probe = classifier
    text = {id(p) for p in model.backbone.text_parameters()}
    groups = []
    for g in build_optimizer(model, cfg.train).param_groups:
        for is_text in (True, False):
            params = [p for p in g["params"] if (id(p) in text) == is_text]
            if params:
                groups.append(
                    {**g, "params": params, "lr": g["lr"] * (args.text_lr if is_text else 1.0), "text": is_text}
                )
    optimizer = torch.optim.AdamW(groups, betas=tuple(cfg.train.betas), eps=cfg.train.eps)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(args.steps, cfg.train.warmup))
    frozen_until = steps_of(args.unfreeze_at, args.steps)
    train_view = ClipTransform(size, train=True, crop_scale=cfg.data.crop_scale)  # the loader's random crop

    test_frames = torch.stack([normalize(c) for c in test_x]).to(device)
    test_ids, test_mask = (t.to(device) for t in model.tokenize(test_c))
    pairs = [
        "a red circle moves left",
        "a red circle moves right",
        "a blue square grows",
        "a blue square shrinks",
        "a green cross fades in",
        "a green cross fades out",
        "a white square rotates clockwise",
        "a white square rotates counterclockwise",
    ]
    pair_ids, pair_mask = (t.to(device) for t in model.tokenize(pairs))

    @torch.no_grad()
    def evaluate() -> str:
        model.eval()
        with autocast():
            ones = torch.ones(test_frames.shape[:2], dtype=torch.bool, device=device)
            scores = (
                model.similarity(model.encode_text(test_ids, test_mask), model.encode_video(test_frames, ones))
                .float()
                .cpu()
            )
            vectors = torch.nn.functional.normalize(
                model.head.text_vector(model.backbone.encode_text(pair_ids, pair_mask)).float(), dim=-1
            )
            top1 = None
            if classifier is not None:
                top1 = (
                    classifier(20 * model.video_vector(test_frames, ones)).argmax(1).cpu() == torch.tensor(test_l)
                ).float().mean().item() * 100
        model.train()
        rows = torch.arange(len(test_c))
        own, other = scores[rows, rows], scores[rows, twin]
        pair = (
            torch.where(torch.isclose(own, other, rtol=1e-5, atol=1e-6), 0.5, (own > other).float()).mean().item() * 100
        )
        r1 = (scores.argmax(1) == rows).float().mean().item() * 100
        cos = [round((vectors[i] @ vectors[i + 1]).item(), 2) for i in range(0, len(pairs), 2)]
        return f"pair {pair:.1f} R@1 {r1:.1f} scale {model.logit_scale().item():.1f} twincos {cos}" + (
            f" classifier top-1 {top1:.1f}" if top1 is not None else ""
        )

    rng = np.random.default_rng(args.seed)
    print(f"[{args.name}] step 0 {evaluate()}", flush=True)
    start = time.time()
    for step in range(args.steps):
        idx = rng.choice(len(train_x), args.batch // (2 if args.twin else 1), replace=False)
        captions = [train_c[i][rng.integers(len(train_c[i]))] for i in idx]
        x = torch.stack([train_view(c) for c in train_x[idx]])
        labels = torch.tensor([train_l[i] for i in idx])
        if args.twin:
            x = torch.cat([x, x.flip(1)])
            captions += [reversed_caption(c, MOTIONS[train_l[i]]) for c, i in zip(captions, idx, strict=True)]
            labels = torch.cat([labels, labels ^ 1])
        x, ones = x.to(device), torch.ones(x.shape[:2], dtype=torch.bool, device=device)
        with autocast():
            if classifier is not None:
                loss = torch.nn.functional.cross_entropy(
                    classifier(20 * model.video_vector(x, ones)), labels.to(device)
                )
            else:
                ids, mask = model.tokenize(captions)
                loss = loss_fn(model(x, ones, ids.to(device), mask.to(device)), {})
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if step < frozen_until:
            for p in model.backbone.text_parameters():
                p.grad = None
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip or float("inf"))
        optimizer.step()
        schedule.step()
        model.clamp_logit_scale()
        if (step + 1) % args.every == 0 or step + 1 == args.steps:
            print(
                f"[{args.name}] step {step + 1} loss {loss.item():.3f} {evaluate()} {time.time() - start:.0f}s",
                flush=True,
            )


if __name__ == "__main__":
    main()
