"""CoCa as a backbone (issue 16): equal to open_clip's CoCa per frame, every head, STAN's fusion
before the attentional pooler, training / gradient caching / evaluation, captions, conversion.

The tiny CoCa (``mugstan-coca-tiny``: 32 px, vision width 96 != joint width 64, 9 pooler
queries, 2-layer text tower and decoder) has random weights; LayerNorm and bias parameters are
perturbed so that no comparison passes because a LayerNorm is the identity.
"""

import contextlib
import dataclasses
import json
import math

import open_clip
import pytest
import torch
import yaml
from data_fixtures import hf_cache_snapshot, write_config
from gradients import assert_gradients_are_derivatives

from mugstan.backbones.build import build_clip, model_from_config, named_config
from mugstan.backbones.clip import Tokenizer
from mugstan.backbones.coca import CoCaBackbone
from mugstan.backbones.convert import coca_config_from_state_dict, save_safetensors
from mugstan.caption import Decoding, caption, generate, process_logits, sample, visual_tokens
from mugstan.config import ConfigError, ModelConfig, STANConfig, load_config
from mugstan.engine.gradcache import gradcache_backward
from mugstan.losses import build_loss
from mugstan.models import build_model

TINY = "mugstan-coca-tiny"
CPU = torch.device("cpu")
CAPTIONS = ["a man is cooking pasta in a kitchen", "dog", "two people dance on a stage while a crowd watches"]


def perturb(module: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.dim() == 1:
                p.add_(torch.randn(p.shape, generator=g) * 0.1)
            if "temporal_fc" in name:  # STAN's zero-initialised projections would hide the temporal path
                p.normal_(0, 0.05, generator=g)


def coca_config(head: str = "meanP", branch: str = "stan") -> ModelConfig:
    return ModelConfig(
        backbone=TINY,
        branch=branch,
        head=head,
        stan=STANConfig(depth=2, drop_path=0.0),
        context_length=16,
        seq_layers=2,
        temperature=0.05 if head == "mug" else None,
    )


def coca_model(head: str = "meanP", branch: str = "stan"):
    torch.manual_seed(0)
    model = build_model(coca_config(head, branch))
    perturb(model)
    return model


def frames(b: int = 3, t: int = 4, seed: int = 1) -> torch.Tensor:
    return torch.randn(b, t, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


@contextlib.contextmanager
def zeroed_branch_output(model):
    """Sets the STAN branch's final class token to zero (a forward hook on its last level)."""

    def hook(module, args, output):
        cls, patches = output
        return torch.zeros_like(cls), patches

    handle = model.branch.spatial[-1].register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def test_build_gives_a_coca_backbone_with_clip_shapes():
    backbone = build_clip(TINY)
    assert isinstance(backbone, CoCaBackbone) and isinstance(backbone.clip, open_clip.CoCa)
    assert (backbone.vision_width, backbone.vision_layers, backbone.vision_heads, backbone.embed_dim) == (96, 4, 3, 64)
    assert (backbone.text_width, backbone.text_heads, len(backbone.text_blocks), backbone.context_length) == (
        64,
        2,
        2,
        76,
    )
    assert (backbone.grid_size, backbone.num_patches, backbone.image_size, backbone.caption_queries) == (4, 16, 32, 8)
    assert not any(p.requires_grad for p in backbone.clip.text_decoder.parameters())
    # open_clip leaves it uninitialised (torch.empty); mugstan draws it from N(0, width^-0.5) as open_clip intends:
    # measured std 0.12505 over its 64 x 49408 values (a sample of that size is within 4e-4 relative)
    projection = backbone.clip.text_decoder.text_projection
    assert projection.std().item() == pytest.approx(64**-0.5, rel=2e-3) and abs(projection.mean().item()) < 1e-3
    with pytest.raises(TypeError, match="attentional pooler"):
        backbone.project(torch.zeros(2, 96))
    with pytest.raises(ValueError, match="context 76"):
        backbone.encode_text(torch.ones(1, 80, dtype=torch.long))


def test_zeroed_branch_gives_coca_per_frame_and_coca_text():
    model = coca_model("mug").eval()
    coca = model.backbone.clip
    x = frames()
    with torch.no_grad(), zeroed_branch_output(model):
        embeds = model.frame_features(x, torch.ones(3, 4, dtype=torch.bool)).embeds  # [3, 4, E]
        ref = coca.encode_image(x.flatten(0, 1), normalize=False).view(3, 4, -1)
        assert (embeds - ref).abs().max() < 1e-5
        assert ref.abs().max() > 1.5  # not a comparison of near-zero vectors (measured 3.07)

        ref_ids = open_clip.get_tokenizer(TINY)(CAPTIONS)  # [3, 76], CLS appended by the tower
        ref_pooled, ref_tokens = coca.text(ref_ids)
        ref_tokens = coca.text.ln_final(ref_tokens) @ coca.text.text_projection  # the pooled one's projection
        for length in (76, 16):  # the dataset's context length does not change the embedding
            ids, mask = Tokenizer(length)(CAPTIONS)
            out = model.backbone.encode_text(ids, mask)
            assert (out.pooled - coca.encode_text(ref_ids, normalize=False)).abs().max() < 1e-5
            assert (out.pooled - ref_pooled).abs().max() < 1e-5
            assert (out.tokens - ref_tokens[:, :length]).abs()[mask].max() < 1e-5
            assert out.tokens.shape == (3, length, 64) and torch.equal(out.mask, mask)


def test_stan_class_token_enters_before_the_attentional_pooler():
    """Fused embedding = open_clip's pooling of the final tokens with the branch's class token
    added at every frame's class position; different from CoCa per frame."""
    model = coca_model("meanP").eval()
    backbone, visual = model.backbone, model.backbone.visual
    x, mask = frames(), torch.ones(3, 4, dtype=torch.bool)
    with torch.no_grad():
        vision = backbone.encode_frames(x.flatten(0, 1), taps=model.branch.taps)
        cls, _ = model.branch.video_state(vision, backbone, mask)  # [3, 1, D]
        last = vision.last.view(3, 4, 17, 96).clone()
        last[:, :, 0] += cls
        pooled, _ = visual._pool(last.flatten(0, 1))  # open_clip: attn_pool -> ln_post -> query 0
        ref = (pooled @ visual.proj).view(3, 4, -1)
        embeds = model.frame_features(x, mask).embeds
        assert (embeds - ref).abs().max() < 1e-5
        assert (embeds - vision.embeds.view(3, 4, -1)).abs().max() > 0.03  # measured 0.062 (embeddings up to 3.07)


@pytest.mark.parametrize(
    "branch,head", [("stan", "mean"), ("none", "meanP"), ("stan", "seqTransf"), ("stan", "tdb_tab"), ("stan", "mug")]
)
def test_every_head_on_coca(branch, head):
    """Loss and gradients through head, branch and CoCa's vision and text towers; padded frames
    change nothing; seqTransf / TDB start from CoCa's text tower."""
    model = coca_model(head, branch)
    if head in ("seqTransf", "tdb_tab"):
        assert model.head.init_from_clip(model.backbone)
        blocks = model.head.transformer if head == "seqTransf" else model.head.transformerClip
        assert torch.equal(blocks.resblocks[0].mlp.c_fc.weight, model.backbone.text_blocks[0].mlp.c_fc.weight)
    ids, text_mask = model.tokenize(["a red circle moves left", "a blue square grows", "a cat"])
    x = frames()
    mask = torch.ones(3, 4, dtype=torch.bool)
    mask[2, 3] = False
    batch = {"frames": x, "frame_mask": mask, "ids": ids, "text_mask": text_mask}
    loss = build_loss(coca_config(head, branch), model)(model(**batch), batch)
    loss.backward()
    assert torch.isfinite(loss)
    named = dict(model.named_parameters())
    cls_emb = named["backbone.clip.text.cls_emb"]  # Mug reads text tokens only: the CLS is frozen, not left unused
    assert cls_emb.requires_grad if head != "mug" else (not cls_emb.requires_grad and cls_emb.grad is None)
    assert all(p.grad is None for n, p in named.items() if "text_decoder" in n)
    # the gradients of the attentional pooler, both towers, the text CLS and the branch are the loss's derivative
    names = [
        "backbone.clip.visual.attn_pool.query",
        "backbone.clip.visual.transformer.resblocks.3.mlp.c_fc.weight",
        "backbone.clip.text.transformer.resblocks.1.mlp.c_fc.weight",
    ]
    names += ["backbone.clip.text.cls_emb"] if head != "mug" else []
    names += ["branch.spatial.1.mlp.c_fc.weight"] if branch == "stan" else []
    loss_of = lambda m: build_loss(coca_config(head, branch), m)(m(**{**batch, "frames": x.double()}), batch)  # noqa: E731
    assert_gradients_are_derivatives(model, loss_of, names)
    model.eval()
    with torch.no_grad():  # the padded frame of video 2 is garbage: same embedding as the 3-frame clip
        padded = model.encode_video(x[2:], mask[2:])
        short = model.encode_video(x[2:, :3], mask[2:, :3])
        if padded.mask is None:
            assert (padded.x - short.x).abs().max() < 1e-5
        else:
            assert (padded.x[:, :3] - short.x).abs().max() < 1e-5


@pytest.mark.parametrize("branch,head", [("stan", "mug"), ("stan", "seqTransf")])
def test_gradient_caching_matches_the_full_batch(branch, head):
    def setup():
        model = coca_model(head, branch).double().train()
        return model, build_loss(coca_config(head, branch), model)

    ids, text_mask = Tokenizer(16)([f"a {c} shape moves {d}" for c in ("red", "blue", "green") for d in ("left", "up")])
    mask = torch.ones(6, 4, dtype=torch.bool)
    mask[3, 2:] = False
    batch = {"frames": frames(6, 4).double(), "frame_mask": mask, "ids": ids, "text_mask": text_mask}
    model, loss_fn = setup()
    loss = loss_fn(model(**batch), batch)
    loss.backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model, loss_fn = setup()
    cached = gradcache_backward(model, loss_fn, batch, chunk_size=4, device=CPU)
    got = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert torch.allclose(cached, loss.detach(), rtol=1e-6) and got.keys() == ref.keys()
    for name in ref:
        assert (ref[name] - got[name]).norm() / ref[name].norm().clamp(min=1e-20) < 1e-6, name


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    from mugstan.data.synthetic import SynthParams, generate

    root = tmp_path_factory.mktemp("synth")
    generate(root, SynthParams(videos=24, frames=8, size=32, seed=0), progress=False)
    return root


@pytest.fixture(scope="module")
def trained(synthetic, tmp_path_factory):
    """Mug-STAN on the tiny CoCa: 3 training steps, then the test split evaluated."""
    from mugstan.engine.train import train

    tmp = tmp_path_factory.mktemp("run")
    path = write_config(tmp / "c.yaml", synthetic, tmp / "run", batch_size=4, max_steps=3, chunk_size=2)
    raw = yaml.safe_load(path.read_text())
    raw["model"].update(backbone=TINY, head="mug", temperature=0.05)
    raw["data"]["test_ann"] = str(synthetic / "test.jsonl")
    path.write_text(yaml.safe_dump(raw))
    results = train(load_config(path), progress=False)
    return tmp / "run", results


def test_training_step_and_evaluation_on_synthetic_data(trained, synthetic):
    run, results = trained
    losses = [
        r["train/loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "train/loss" in r
    ]
    assert len(losses) == 3 and all(math.isfinite(loss) and loss > 0 for loss in losses)
    test = results["test"]
    videos = len((synthetic / "test.jsonl").read_text().splitlines())  # one caption per test video
    assert test["protocol"] == "1:1" and test["counts"] == {"videos": videos, "captions": videos}
    from mugstan.engine.checkpoint import load_model
    from mugstan.engine.evaluate import evaluate

    model, saved = load_model(run / "checkpoints" / "best")  # the reported test numbers are the best checkpoint's
    assert evaluate(model, saved, progress=False)["retrieval"] == test["retrieval"]
    from safetensors.torch import load_file

    weights = load_file(run / "checkpoints" / "best" / "model.safetensors")
    assert "backbone.clip.text_decoder.text_projection" in weights and "backbone.clip.visual.attn_pool.query" in weights


def test_caption_command_on_a_trained_checkpoint(trained, synthetic, tmp_path, capsys):
    """Captions on stdout (path, tab, caption); greedy and beam search deterministic. One rule for
    bad input: every video is opened and the options checked before the model loads, and a bad
    video, option or a checkpoint without a caption decoder is one `error:` line, exit 2."""
    from mugstan.cli import main

    run, _ = trained
    best = str(run / "checkpoints" / "best")
    video = str(sorted(synthetic.rglob("*.mp4"))[0])
    from mugstan.caption import caption_file
    from mugstan.engine.checkpoint import load_model

    model, cfg = load_model(best)
    for args, opts in (  # each twice where it is deterministic: the same caption
        (["--seq-len", "7"], Decoding(seq_len=7)),
        (["--seq-len", "7"], Decoding(seq_len=7)),
        (["--generation", "top_k", "--seq-len", "7"], Decoding(generation="top_k", seq_len=7)),
        (["--generation", "top_k", "--seq-len", "7"], Decoding(generation="top_k", seq_len=7)),
        (["--generation", "top_p", "--top-p", "0.9", "--seed", "1"], Decoding(generation="top_p", top_p=0.9, seed=1)),
    ):
        assert main(["caption", video, "--checkpoint", best, *args]) == 0
        expected = caption_file(model, cfg, video, opts=opts)  # the options as Decoding, in this process
        assert capsys.readouterr().out == f"{video}\t{expected}\n" and expected, args

    def fails(*argv, expected):
        rc = main(["caption", *map(str, argv)])
        out, err = capsys.readouterr()
        assert (
            rc == 2 and out == "" and err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
        ), (rc, out, err)
        assert expected in err, err

    fails(
        video,
        synthetic / "missing.mp4",
        "--checkpoint",
        tmp_path / "no_checkpoint",
        expected="missing.mp4: file not found",
    )
    fails(
        video, "--checkpoint", best, "--seq-len", "4", "--min-seq-len", "5", expected="--seq-len 4 and --min-seq-len 5"
    )
    fails(
        video,
        "--checkpoint",
        best,
        "--num-beams",
        "6",
        "--num-beam-groups",
        "4",
        expected="--num-beams 6 --num-beam-groups 4",
    )
    from mugstan.config import ExperimentConfig
    from mugstan.engine.checkpoint import save_checkpoint

    clip_cfg = ModelConfig(backbone="mugstan-tiny", branch="stan", head="mean", stan=STANConfig(depth=2))
    plain = save_checkpoint(tmp_path / "clip_ckpt", build_model(clip_cfg), ExperimentConfig(model=clip_cfg))
    fails(video, "--checkpoint", plain, expected="has no caption decoder")


def test_greedy_caption_follows_coca_and_is_deterministic():
    """One frame, no branch: the decoder reads exactly CoCa's image tokens, and each greedy token
    (top_k sampling with top_k 1) is the argmax of open_clip's CoCa logits (teacher forcing) after
    the tokens before it."""
    model = coca_model("meanP", branch="none").eval()
    coca = model.backbone.clip
    x = frames(2, 1)
    mask = torch.ones(2, 1, dtype=torch.bool)
    greedy = Decoding(generation="top_k", top_k=1, seq_len=9)
    with torch.no_grad():
        visual = visual_tokens(model, x, mask)
        _, image_embs = coca._encode_image(x[:, 0])
        assert (visual - image_embs).abs().max() < 1e-5
        ids = generate(model.backbone, visual, greedy)
        assert ids == generate(model.backbone, visual, greedy)
        assert [
            generate(model.backbone, visual[i : i + 1], greedy)[0] for i in range(2)
        ] == ids  # batching changes nothing
        for i, seq in enumerate(ids):
            prefix = torch.tensor([[49406, *seq]])
            logits = coca(x[i : i + 1, 0], prefix, output_labels=False)["logits"][0]  # [1 + len, V]
            assert logits[:-1].argmax(-1).tolist() == seq
        texts = caption(model, x, mask, greedy)
        assert texts == caption(model, x, mask, greedy)
        assert texts == [" ".join(open_clip.decode(torch.tensor(seq)).split()) for seq in ids]  # open_clip's BPE


def test_caption_tokens_read_all_real_frames_and_no_padded_one():
    """A video's caption tokens: the pooler's caption queries over the fused tokens of its real
    frames; a padded garbage frame changes nothing, a real frame does."""
    model = coca_model("mug").eval()
    x = frames(2, 4)
    x[1, 3] = 100.0  # garbage in the padded frame of video 1
    mask = torch.ones(2, 4, dtype=torch.bool)
    mask[1, 3] = False
    with torch.no_grad():
        tokens = visual_tokens(model, x, mask)
        short = visual_tokens(model, x[1:, :3], mask[1:, :3])
        assert tokens.shape == (2, 8, 64)
        assert (tokens[1] - short[0]).abs().max() < 1e-5
        assert (visual_tokens(model, x[:1, :3], mask[:1, :3]) - tokens[:1]).abs().max() > 0.3  # measured 0.71


def rigged_coca(seed: int):
    """A tiny random CoCa (no branch) whose decoder often ends captions early: the EOT column of its
    output projection is a slightly scaled copy of a token greedy decoding picks often, and column 0
    (open_clip's pad id) another, so that beams close at different lengths and sampling meets 0."""
    model = coca_model("meanP", branch="none").eval()
    x = frames(3, 1, seed=seed)
    with torch.no_grad():
        proj = model.backbone.clip.text_decoder.text_projection
        picked = sum(
            generate(
                model.backbone,
                visual_tokens(model, x, torch.ones(3, 1, dtype=torch.bool)),
                Decoding(generation="top_k", seq_len=12),
            ),
            [],
        )
        common = sorted(set(picked), key=lambda t: (-picked.count(t), t))
        g = torch.Generator().manual_seed(seed)
        proj[:, 49407] = proj[:, common[0]] * (1 + 0.05 * seed) + torch.randn(proj.shape[0], generator=g) * 0.02
        proj[:, 0] = proj[:, common[1]] * 1.02 + torch.randn(proj.shape[0], generator=g) * 0.02
    return model, x


def open_clip_ids(coca, image, opts: Decoding) -> list[list[int]]:
    """``open_clip.CoCa.generate`` with the same options, as caption token ids (mugstan's rule)."""
    kw = dict(
        seq_len=opts.seq_len,
        min_seq_len=opts.min_seq_len,
        num_beams=opts.num_beams,
        num_beam_groups=opts.num_beam_groups,
        top_k=opts.top_k,
        top_p=opts.top_p,
        temperature=opts.temperature,
        repetition_penalty=opts.repetition_penalty,
    )
    torch.manual_seed(opts.seed)
    out = []
    for seq in coca.generate(image, generation_type=opts.generation, **kw).tolist():
        ends = [i for i, t in enumerate(seq[1:]) if t == 49407 or (t == 0 and opts.generation != "beam_search")]
        out.append(seq[1:][: ends[0]] if ends else seq[1:])
    return out


def open_clip_beam_search_runs() -> bool:
    """open_clip's beam search needs transformers' BeamSearchScorer (transformers < 4.57)."""
    import open_clip.coca_model as ocm

    return ocm._has_transformers


SAMPLING = [
    Decoding(generation="top_k", top_k=1, seq_len=12),
    Decoding(generation="top_k", top_k=5, temperature=0.7, seq_len=16, seed=1),
    Decoding(generation="top_p", top_p=0.5, seq_len=16, seed=2),
    Decoding(generation="top_p", repetition_penalty=1.5, seq_len=12, seed=3),
]
BEAMS = [
    Decoding(),
    Decoding(num_beams=4, num_beam_groups=1, seq_len=12),
    Decoding(num_beams=6, num_beam_groups=2, seq_len=14, min_seq_len=3),
    Decoding(num_beams=3, num_beam_groups=1, seq_len=10, repetition_penalty=1.3),
]


@pytest.mark.parametrize("seed", [0, 2])
def test_sampling_equals_open_clip_generate(seed, monkeypatch):
    """open_clip's own CoCa.generate (top_k / top_p, its logit processors and warpers from the
    installed transformers, the same seed) gives the same tokens, token for token, as mugstan."""
    import open_clip.coca_model as ocm
    from transformers import TopKLogitsWarper, TopPLogitsWarper

    if not ocm._has_transformers:  # transformers >= 4.57 lacks only BeamSearchScorer, which sampling does not use
        monkeypatch.setattr(ocm, "_has_transformers", True)
        monkeypatch.setattr(
            ocm,
            "GENERATION_TYPES",
            {"top_k": TopKLogitsWarper, "top_p": TopPLogitsWarper, "beam_search": "beam_search"},
        )
    model, x = rigged_coca(seed)
    coca = model.backbone.clip
    with torch.no_grad():
        visual = coca._encode_image(x[:, 0])[1]
        lengths = set()
        for opts in SAMPLING:
            opts = dataclasses.replace(opts, seed=opts.seed + seed)
            ours = generate(model.backbone, visual, opts)
            assert ours == open_clip_ids(coca, x[:, 0], opts), opts
            lengths |= {len(c) for c in ours}
    assert min(lengths) < 10  # some captions ended early (EOT or 0)


@pytest.mark.skipif(
    not open_clip_beam_search_runs(),
    reason="open_clip's beam search needs transformers' BeamSearchScorer "
    "(removed in transformers 4.57); test_beam_search_follows_the_scorer runs its rules instead",
)
@pytest.mark.parametrize("seed", [0, 2])
def test_beam_search_equals_open_clip_generate(seed):
    model, x = rigged_coca(seed)
    coca = model.backbone.clip
    with torch.no_grad():
        visual = coca._encode_image(x[:, 0])[1]
        for opts in BEAMS:
            assert generate(model.backbone, visual, opts) == open_clip_ids(coca, x[:, 0], opts), opts


def scorer_reference(coca, image, opts: Decoding) -> list[int]:
    """transformers' BeamSearchScorer as open_clip's _generate_beamsearch drives it, for one image,
    written as a plain loop over open_clip's CoCa logits: raw logits summed; the 2G best (beam,
    token) pairs; an EOT among the first G closes a hypothesis scored sum / (length + 1); at most G
    hypotheses, the worst dropped; done when G are held and none can be beaten; open beams join at
    seq_len scored sum / length."""
    g = opts.num_beams // opts.num_beam_groups
    beams = [([49406], 0.0)] + [([49406], -1e9)] * (g - 1)
    hyps = []
    while True:
        length = len(beams[0][0])
        prefixes = torch.tensor([b for b, _ in beams])
        logits = coca(image.expand(g, -1, -1, -1), prefixes, output_labels=False)["logits"][:, -1].float()
        logits = process_logits(logits, prefixes, opts)
        total = (logits + torch.tensor([s for _, s in beams])[:, None]).flatten()
        top, index = total.topk(2 * g)
        nxt = []
        for rank, (value, i) in enumerate(zip(top.tolist(), index.tolist(), strict=True)):
            beam, token = divmod(i, logits.shape[1])
            if token == 49407:
                if rank < g:
                    hyps = sorted(hyps + [(value / (length + 1), beams[beam][0])], key=lambda h: -h[0])[:g]
            elif len(nxt) < g:
                nxt.append((beams[beam][0] + [token], value))
        beams = nxt
        if len(hyps) == g and hyps[-1][0] >= top[0].item() / (length + 1):
            break
        if len(beams[0][0]) >= opts.seq_len:
            hyps = sorted(hyps + [(s / len(b), b) for b, s in beams], key=lambda h: -h[0])
            break
    best = hyps[0][1][1:]
    return best[: best.index(49407)] if 49407 in best else best


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_beam_search_follows_the_scorer(seed):
    """mugstan's batched beam search against the scorer's rules written per image over open_clip's
    own logits, token for token; the rigged decoder closes beams at different lengths."""
    model, x = rigged_coca(seed)
    coca = model.backbone.clip
    with torch.no_grad():
        visual = coca._encode_image(x[:, 0])[1]
        lengths = set()
        for opts in BEAMS[1:]:
            ours = generate(model.backbone, visual, opts)
            assert ours == [scorer_reference(coca, x[i : i + 1, 0], opts) for i in range(3)], opts
            lengths |= {len(c) for c in ours}
    assert len(lengths) > 1


def test_sampling_stops_at_token_zero():
    """open_clip's sampling loop ends a caption at its pad id 0 as at EOT: greedy decoding of the
    rigged decoder meets 0 and stops there."""
    model, x = rigged_coca(0)
    coca = model.backbone.clip
    opts = Decoding(generation="top_k", top_k=1, seq_len=16)
    with torch.no_grad():
        visual = coca._encode_image(x[:, 0])[1]
        ids = sample(model.backbone, visual, opts)
        captions = generate(model.backbone, visual, opts)
    stopped = [row.index(0) for row in ids.tolist() if 0 in row]
    assert stopped, "the rig should make greedy decoding meet token 0"
    for row, cap in zip(ids.tolist(), captions, strict=True):
        if 0 in row and 49407 not in row[: row.index(0)]:
            assert cap == row[1 : row.index(0)] and all(t == 0 for t in row[row.index(0) :])


def test_caption_needs_a_coca_backbone():
    model = build_model(ModelConfig(backbone="mugstan-tiny", branch="stan", head="mean", stan=STANConfig(depth=2)))
    with pytest.raises(ValueError, match="CoCa backbone"):
        caption(model, frames(1, 2), torch.ones(1, 2, dtype=torch.bool))


def test_convert_open_clip_coca_checkpoint(tmp_path, capsys):
    """An open_clip CoCa checkpoint without metadata (``open_clip_pytorch_model.bin``): shapes of a
    named architecture give its head counts (mugstan-coca-tiny: 3 vision heads of width 32, a pooler
    of 2), written into the safetensors and rebuilt exactly; shapes of no named one are refused."""
    from mugstan.cli import main

    torch.manual_seed(0)
    coca = model_from_config(named_config(TINY))
    perturb(coca)
    torch.save(coca.state_dict(), tmp_path / "open_clip_pytorch_model.bin")
    out = tmp_path / "coca.safetensors"
    assert main(["convert", str(tmp_path / "open_clip_pytorch_model.bin"), str(out)]) == 0
    assert "CoCa ViT" in capsys.readouterr().out
    backbone = build_clip(None, weights=out)
    assert isinstance(backbone, CoCaBackbone)
    assert (backbone.vision_heads, backbone.clip.visual.attn_pool.attn.num_heads, backbone.text_heads) == (3, 2, 2)
    x = torch.randn(2, 3, 32, 32)
    ids, mask = Tokenizer(16)(CAPTIONS[:2])
    with torch.no_grad():
        assert (backbone.encode_frames(x).embeds - coca.encode_image(x, normalize=False)).abs().max() < 1e-5
        assert (
            backbone.encode_text(ids, mask).pooled
            - coca.encode_text(open_clip.tokenize(CAPTIONS[:2], 76), normalize=False)
        ).abs().max() < 1e-5

    # shapes of no named architecture: the head counts would be a guess
    config = {
        "embed_dim": 64,
        "quick_gelu": False,
        "vision_cfg": {
            "image_size": 32,
            "layers": 2,
            "width": 64,
            "patch_size": 16,
            "attentional_pool": True,
            "attn_pooler_queries": 5,
            "attn_pooler_heads": 8,
            "output_tokens": True,
        },
        "text_cfg": {
            "context_length": 76,
            "vocab_size": 49408,
            "width": 64,
            "heads": 1,
            "layers": 1,
            "embed_cls": True,
            "output_tokens": True,
        },
        "multimodal_cfg": {"context_length": 76, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 1},
    }
    torch.save(open_clip.CoCa(**config).state_dict(), tmp_path / "unnamed.bin")
    assert main(["convert", str(tmp_path / "unnamed.bin"), str(tmp_path / "unnamed.safetensors")]) == 2
    assert "head counts cannot be known" in capsys.readouterr().err and not (tmp_path / "unnamed.safetensors").exists()
    with pytest.raises(ConfigError, match="model.backbone"):
        build_clip(None, weights=tmp_path / "unnamed.bin")

    # metadata round trip: a config with other head counts survives as written
    tiny = build_clip(TINY)
    save_safetensors(
        tiny.clip.state_dict(), tmp_path / "tiny.safetensors", {"config": json.dumps(open_clip.get_model_config(TINY))}
    )
    again = build_clip(None, weights=tmp_path / "tiny.safetensors")
    assert again.clip.visual.attn_pool.attn.num_heads == 2
    with torch.no_grad():
        assert torch.equal(again.encode_frames(x).embeds, tiny.encode_frames(x).embeds)


@pytest.mark.parametrize("name", ["coca_ViT-B-32", "coca_ViT-L-14"])
def test_inferred_config_builds_the_released_architectures(name):
    """Shapes of the released CoCa models (built on the meta device: no memory, no download)
    give back their open_clip config."""
    with torch.device("meta"):
        sd = model_from_config(open_clip.get_model_config(name)).state_dict()
        rebuilt = model_from_config(coca_config_from_state_dict(sd, name)).state_dict()
    assert {k: v.shape for k, v in rebuilt.items()} == {k: v.shape for k, v in sd.items()}
    ref = open_clip.get_model_config(name)
    inferred = coca_config_from_state_dict(sd, name)
    assert inferred["vision_cfg"]["attn_pooler_heads"] == ref["vision_cfg"]["attn_pooler_heads"]
    assert (
        inferred["text_cfg"]["heads"] == ref["text_cfg"]["heads"]
        and inferred["multimodal_cfg"]["heads"] == ref["multimodal_cfg"]["heads"]
    )


def test_search_page_captions_a_result(trained, synthetic, tmp_path):
    """The search API says the index's model can caption, and /api/caption captions a result's
    window as `mugstan caption` does; paths outside the index are 404."""
    from fastapi.testclient import TestClient

    from mugstan.caption import caption_file
    from mugstan.search.index import build_index
    from mugstan.search.query import Searcher
    from mugstan.search.server import create_app

    run, _ = trained
    videos = synthetic / "videos" / "test"
    build_index(videos, run / "checkpoints" / "best", tmp_path / "index")
    searcher = Searcher(tmp_path / "index")
    client = TestClient(create_app(searcher))
    found = client.get("/api/search", params={"q": "a red circle moves left", "k": 3}).json()
    assert found["captions"] is True and found["results"]
    r = found["results"][0]
    got = client.get("/api/caption", params={"path": r["path"], "start": r["start"], "end": r["end"]})
    assert got.status_code == 200, got.text
    expected = caption_file(
        searcher.model, searcher.cfg, videos / r["path"], r["start"], r["end"], frames=searcher.meta["frames"]
    )
    assert got.json()["caption"] == expected and expected
    for params in ({"path": "../secret.mp4", "start": 0, "end": 1}, {"path": "missing.mp4", "start": 0, "end": 1}):
        assert client.get("/api/caption", params=params).status_code == 404
    assert client.get("/api/caption", params={"path": r["path"], "start": 1.0, "end": 0.5}).status_code == 422
    assert "/api/caption" in client.get("/search.js").text


@pytest.mark.slow
def test_open_clip_tag_loads_coca_weights(tmp_path):
    """`model.pretrained: laion2b_s13b_b90k` runs open_clip's real tag path (its Hugging Face
    download pointed at a local, offline cache holding random coca_ViT-B-32 weights): a
    CoCaBackbone with every tensor from the file, the caption decoder's projection included (the
    random initialisation of a model built without weights must not replace it)."""
    import os
    import subprocess
    import sys

    from safetensors.torch import save_file

    repo_id = open_clip.get_pretrained_cfg("coca_ViT-B-32", "laion2b_s13b_b90k")["hf_hub"].strip("/")
    torch.manual_seed(0)
    weights = {
        k: v.half().contiguous()
        for k, v in model_from_config(open_clip.get_model_config("coca_ViT-B-32")).state_dict().items()
    }
    weights["text_decoder.text_projection"].normal_(0, 0.05)  # open_clip leaves it uninitialised
    save_file(weights, str(hf_cache_snapshot(tmp_path / "hub", repo_id) / "open_clip_model.safetensors"))
    code = (
        "import sys, torch\n"
        "from mugstan.backbones.build import build_clip\n"
        "b = build_clip('coca_ViT-B-32', pretrained='laion2b_s13b_b90k')\n"
        "print(type(b).__name__, b.embed_dim, b.context_length)\n"
        "sd = b.clip.state_dict()\n"
        "torch.save({k: sd[k] for k in sys.argv[2:]}, sys.argv[1])\n"
    )
    probes = [
        "text_decoder.text_projection",
        "visual.attn_pool.query",
        "text.cls_emb",
        "visual.transformer.resblocks.11.mlp.c_fc.weight",
    ]
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "w.pt"), *probes],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["CoCaBackbone", "512", "76"]
    loaded = torch.load(tmp_path / "w.pt")
    for key in probes:
        assert torch.equal(loaded[key], weights[key].float()), key
