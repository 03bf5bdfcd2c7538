"""The methods of methods.md: sizes, identity at initialisation, masks, frame order, Mug; every
branch with every head."""

import pytest
import torch
import torch.nn.functional as F
from gradients import assert_gradients_are_derivatives

from mugstan.backbones.build import build_clip
from mugstan.branches.stan import STAN
from mugstan.config import ConfigError, ModelConfig, STANConfig, load_config
from mugstan.engine.optim import param_groups
from mugstan.heads.base import Embeddings
from mugstan.heads.mug import Mug
from mugstan.losses import build_loss
from mugstan.models import build_model

BRANCHES = ["none", "stan"]
HEADS = ["mean", "meanP", "seqTransf", "tdb_tab", "mug"]


@pytest.fixture(scope="module")
def vit_b32():
    return build_clip("ViT-B-32")  # random init, nothing downloaded


@pytest.mark.parametrize("time_module,expected", [("self", 40.2e6), ("conv", 94.5e6)])
def test_stan_branch_size_on_vit_b32(vit_b32, time_module, expected):
    branch = STAN(vit_b32, depth=4, time_module=time_module)
    assert sum(p.numel() for p in branch.parameters()) == pytest.approx(expected, abs=0.05e6)
    assert branch.taps == [8, 9, 10, 11]


def tiny(branch="none", head="meanP", **kw):
    torch.manual_seed(0)
    cfg = ModelConfig(backbone="mugstan-tiny", branch=branch, head=head, stan=STANConfig(depth=2, **kw))
    return build_model(cfg).eval()


def clips(b=3, t=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, t, 3, 32, 32, generator=g), torch.ones(b, t, dtype=torch.bool)


@pytest.mark.parametrize("time_module", ["self", "conv"])
def test_stan_temporal_modules_are_identity_at_init(time_module):
    model = tiny("stan", "mean", time_module=time_module)
    patches, mask = torch.randn(2, 16, 5, 64), torch.ones(2, 5, dtype=torch.bool)
    for module in model.branch.temporal:
        assert torch.equal(module(patches, mask), patches)


MODULES = [
    ("none", "meanP", {}),
    ("none", "seqTransf", {}),
    ("none", "tdb_tab", {}),
    ("stan", "mean", {"time_module": "self"}),
    ("stan", "mean", {"time_module": "conv"}),
    ("stan", "seqTransf", {}),
    ("stan", "tdb_tab", {}),
    ("none", "mug", {}),
]


def perturb_zero_init(model):
    """STAN's temporal projections start at zero; give them weights so time matters."""
    with torch.no_grad():
        for name, p in model.branch.named_parameters():
            if "temporal_fc" in name:
                p.normal_(0, 0.2)


@pytest.mark.parametrize("branch,head,kw", MODULES, ids=[f"{b}-{h}{k.get('time_module', '')}" for b, h, k in MODULES])
def test_padded_frames_do_not_change_outputs(branch, head, kw):
    model = tiny(branch, head, **kw)
    perturb_zero_init(model)
    frames, mask = clips(t=4)
    padded = torch.cat([frames, torch.randn(3, 3, 3, 32, 32) * 5], dim=1)  # garbage in the padding
    pmask = torch.cat([mask, torch.zeros(3, 3, dtype=torch.bool)], dim=1)
    with torch.no_grad():
        ref = model.video_vector(frames, mask)
        out = model.video_vector(padded, pmask)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "branch,head,kw,order_matters",
    [
        ("none", "meanP", {}, False),
        ("none", "tdb_tab", {}, True),
        ("stan", "mean", {"time_module": "self"}, True),
        ("stan", "mean", {"time_module": "conv"}, True),
        ("stan", "mug", {}, True),
    ],
)
def test_reversing_frames(branch, head, kw, order_matters):
    model = tiny(branch, head, **kw)
    perturb_zero_init(model)
    frames, mask = clips()
    with torch.no_grad():
        fwd = model.video_vector(frames, mask)
        rev = model.video_vector(frames.flip(1), mask)
    # measured: 1.5e-3 (STAN self, Mug), 4.0e-3 (STAN conv), 7.1e-2 (TDB) apart; meanP 3e-8 (of values up to 0.34)
    assert (fwd - rev).abs().max().item() > 1e-3 if order_matters else torch.allclose(fwd, rev, atol=1e-6, rtol=0)


def test_seqtransf_starts_from_clip_text_layers():
    model = tiny("none", "seqTransf")
    clip = model.backbone.clip
    ours = model.head.transformer.resblocks[0]
    assert torch.equal(ours.attn.in_proj.weight, clip.transformer.resblocks[0].attn.in_proj_weight)
    assert torch.equal(ours.mlp.c_proj.bias, clip.transformer.resblocks[0].mlp.c_proj.bias)
    assert torch.equal(model.head.frame_position_embeddings.weight, clip.positional_embedding)


def test_stan_spatial_modules_are_copies_not_shared():
    model = tiny("stan", "mean")
    block = model.backbone.visual.transformer.resblocks[2]
    spatial = model.branch.spatial[0]
    assert torch.equal(spatial.attn.in_proj_weight, block.attn.in_proj_weight)
    assert spatial.attn.in_proj_weight.data_ptr() != block.attn.in_proj_weight.data_ptr()
    names = {n for n, _ in model.named_parameters()}
    assert not any("class_embedding" in n or "positional_embedding" in n for n in names if n.startswith("branch."))


def test_clip2video_compat_mask_mixes_videos_only_with_padding():
    fixed, compat = tiny("none", "tdb_tab"), tiny("none", "tdb_tab")
    compat.head.compat = True
    for block in (compat.head.frame2t_attention, compat.head.transformerClip, compat.head.actionClip):
        block.head_major_mask = True
    frames, mask = clips(b=3, t=5)
    with torch.no_grad():
        assert torch.allclose(fixed.encode_video(frames, mask).x, compat.encode_video(frames, mask).x, atol=1e-5)
        mask[0, 2:] = False
        mask[2, 4:] = False
        assert not torch.allclose(fixed.encode_video(frames, mask).x, compat.encode_video(frames, mask).x, atol=1e-4)


def dense_mug(t, tm, v, vm, lam, mode, compat=False):
    """methods.md §5 written out directly, one (text, video) pair at a time, building features."""
    out = torch.zeros(t.shape[0], v.shape[0])
    for a in range(t.shape[0]):
        for b in range(v.shape[0]):
            T_, V_ = t[a][tm[a]], v[b][vm[b]]  # real words [l, E], real frames [n, E]
            s = T_ @ V_.t()  # [l, n]
            if mode == "simple":
                w = (torch.softmax(lam * s, 1) * s).sum(1)
                f = (torch.softmax(lam * s, 0) * s).sum(0)
                out[a, b] = ((torch.softmax(lam * w, 0) * w).sum() + (torch.softmax(lam * f, 0) * f).sum()) / 2
            else:
                words = t[a] if compat else T_
                s_all = (t[a] @ V_.t()) * tm[a][:, None] if compat else s
                vid_feat = torch.softmax(lam * s_all, 1) @ V_  # per word
                w = (vid_feat * words).sum(-1)
                txt_feat = torch.softmax(lam * s, 0).t() @ T_  # per frame
                f = (txt_feat * V_).sum(-1)
                pooled_t = torch.softmax(lam * w, 0) @ words
                pooled_v = torch.softmax(lam * f, 0) @ V_
                out[a, b] = pooled_t @ pooled_v
    return out


@pytest.mark.parametrize("mode,compat", [("simple", False), ("full", False), ("full", True)])
def test_mug_matches_dense_computation(mode, compat):
    g = torch.Generator().manual_seed(0)
    t = F.normalize(torch.randn(5, 7, 16, generator=g), dim=-1)
    v = F.normalize(torch.randn(4, 6, 16, generator=g), dim=-1)
    tm = torch.arange(7) < torch.tensor([7, 3, 5, 2, 6])[:, None]
    vm = torch.arange(6) < torch.tensor([6, 2, 4, 1])[:, None]
    ref = dense_mug(t, tm, v, vm, 10.0, mode, compat)
    text, video = Embeddings(t, tm), Embeddings(v, vm)
    torch.testing.assert_close(Mug(10.0, mode, compat).similarity(text, video), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(Mug(10.0, mode, compat).similarity(text, video, chunk=2), ref, rtol=1e-5, atol=1e-5)
    if mode == "full":  # the compat leak differs from the fix exactly when there is padding
        other = Mug(10.0, mode, not compat).similarity(text, video)
        assert torch.allclose(other[0], ref[0], atol=1e-5) and not torch.allclose(other[1:], ref[1:], atol=1e-4)


@pytest.mark.parametrize("branch", BRANCHES)
@pytest.mark.parametrize("head", HEADS)
def test_every_branch_with_every_head_trains_and_scores(branch, head):
    """Every composition runs forward, loss and backward; its new modules get gradients; chunked
    similarity equals the dense scores."""
    model = tiny(branch, head).train()
    cfg = ModelConfig(backbone="mugstan-tiny", branch=branch, head=head)
    frames, mask = clips()
    mask[1, 4:] = False
    ids, tmask = model.tokenize(["a red circle moves left", "a blue square grows", "a green triangle"])
    outputs = model(frames, mask, ids, tmask)
    loss = build_loss(cfg, model)(outputs, {})
    loss.backward()
    assert torch.isfinite(loss)
    # the new modules' gradients (the temporal modules' zero-initialised output Linear, the head's
    # first tensors), CLIP's first layer and the logit scale are the loss's derivative
    new = [n for n, p in model.named_parameters() if p.requires_grad and ("temporal_fc" in n or n.startswith("head."))]
    names = [n for n in new if "temporal_fc" in n] + [n for n in new if n.startswith("head.")][:4]
    assert_gradients_are_derivatives(
        model,
        lambda m: build_loss(cfg, m)(m(frames.double(), mask, ids, tmask), {}),
        names + ["backbone.clip.visual.conv1.weight", "logit_scale.log_scale"],
    )
    model.eval()
    with torch.no_grad():
        text, video = model.encode_text(ids, tmask), model.encode_video(frames, mask)
        dense = model.similarity(text, video)
        again = model(frames, mask, ids, tmask)  # the training forward: the encoders' embeddings and masks
    for name, emb in (("text", text), ("video", video)):
        assert torch.equal(again[name].x, emb.x) and (again[name].mask is None) == (emb.mask is None), name
        assert emb.mask is None or torch.equal(again[name].mask, emb.mask), name
        torch.testing.assert_close(model.similarity(text, video, chunk=2), dense)
    assert dense.shape == (3, 3)


def test_frame_features_expose_patch_tokens():
    for branch in BRANCHES:
        model = tiny(branch, "mean")
        frames, mask = clips(b=2, t=3)
        with torch.no_grad():
            feats = model.frame_features(frames, mask)
        assert feats.embeds.shape == (2, 3, 64) and feats.patches.shape == (2, 3, 16, 64)


def test_param_groups_and_logit_scale_clamp():
    model = tiny("stan", "mean")
    groups = {g["name"]: g for g in param_groups(model)}
    assert set(groups) == {"clip_decay", "clip_no_decay", "new_decay", "new_no_decay"}
    no_decay = {id(p) for p in groups["clip_no_decay"]["params"] + groups["new_no_decay"]["params"]}
    assert id(model.logit_scale.log_scale) in no_decay and id(model.branch.time_embed.weight) in no_decay
    with torch.no_grad():
        model.logit_scale.log_scale.fill_(10.0)
    model.clamp_logit_scale()
    assert model.logit_scale().item() == pytest.approx(100.0)


def test_bad_model_configs(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: {backbone: mugstan-tiny, branch: lstm}\n")
    with pytest.raises(ConfigError, match="branch"):
        load_config(path, check_files=False)
    path.write_text("model: {backbone: mugstan-tiny, temporal: stan, head: cosine}\n")
    with pytest.raises(
        ConfigError, match="model.temporal was replaced by model.branch and model.head: write branch: stan, head: mean"
    ):
        load_config(path, check_files=False)
    path.write_text("model: {backbone: mugstan-tiny, head: mug}\n")
    with pytest.raises(ConfigError, match="model.temporal was replaced"):
        load_config(path, ["model.temporal=meanP"], check_files=False)
    model = tiny("stan", "mean")
    with pytest.raises(ValueError, match="raise model.stan.max_frames"):
        model.encode_video(torch.zeros(1, 65, 3, 32, 32), torch.ones(1, 65, dtype=torch.bool))
    with pytest.raises(ValueError, match="at least one real frame"):
        model.encode_video(torch.zeros(1, 2, 3, 32, 32), torch.zeros(1, 2, dtype=torch.bool))
