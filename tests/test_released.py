"""Released checkpoints: the authors' own STAN checkpoint and outputs (../shared/fixtures), and
round trips through the STAN / CLIP4Clip / CLIP2Video layouts."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mugstan.backbones.convert import WeightsError
from mugstan.cli import main as cli
from mugstan.config import ModelConfig, STANConfig, model_config
from mugstan.models import build_model
from mugstan.released import convert_clip2video, convert_stan, load_converted, to_clip2video_state_dict, to_stan_state_dict

FIXTURE = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "stan_official_tiny"
# The fixture's CLIP has 4 heads of width 16 (vision) and 12 (text); shapes cannot tell heads apart:
# its HuggingFace config (FIXTURE / "hf") gives them.


@pytest.mark.skipif(not (FIXTURE / "official.pth").is_file(), reason="needs ../shared/fixtures/stan_official_tiny")
def test_authors_stan_checkpoint_gives_the_authors_outputs(tmp_path):
    """official.pth (254 tensors in the released mmengine layout) converts with every tensor used,
    and the converted model reproduces the outputs the authors' module computed (reference.pt)."""
    state, cfg = convert_stan(FIXTURE / "official.pth", clip_config=FIXTURE / "hf")
    assert cfg["branch"] == "stan" and cfg["head"] == "mean" and cfg["stan"]["depth"] == 4 and cfg["backbone"] is None
    assert (cfg["backbone_config"]["vision_cfg"]["head_width"], cfg["backbone_config"]["text_cfg"]["heads"]) == (16, 4)
    model = build_model(model_config(cfg, ["model.context_length=16"])).eval()
    missing, unexpected = model.load_state_dict(state, strict=True)
    assert not missing and not unexpected
    ref = torch.load(FIXTURE / "reference.pt")
    mask = torch.ones(2, ref["T"], dtype=torch.bool)
    tmask = ref["ids"] != 0
    with torch.no_grad():
        frames = model.frame_features(ref["video"], mask).embeds
        video = model.encode_video(ref["video"], mask).x
        text = model.backbone.encode_text(ref["ids"], tmask)
    torch.testing.assert_close(frames, ref["emb_frames"], rtol=0, atol=1e-5)
    torch.testing.assert_close(video, F.normalize(ref["emb_mean"], dim=-1), rtol=0, atol=1e-5)
    torch.testing.assert_close(text.pooled, ref["text"], rtol=0, atol=1e-5)
    torch.testing.assert_close(text.tokens[tmask], ref["text_tokens"][tmask], rtol=0, atol=1e-5)

    out = tmp_path / "stan.safetensors"  # the command line, the head counts from the CLIP it was trained from
    assert cli(["convert", str(FIXTURE / "official.pth"), str(out), "--format", "stan", "--clip-config", str(FIXTURE / "hf")]) == 0
    with torch.no_grad():
        again = load_converted(out, ["model.context_length=16"]).eval().frame_features(ref["video"], mask).embeds
    torch.testing.assert_close(again, ref["emb_frames"], rtol=0, atol=1e-5)


@pytest.mark.skipif(not (FIXTURE / "hf").is_dir(), reason="needs ../shared/fixtures/stan_official_tiny")
def test_hf_folder_whose_config_holds_only_non_default_keys():
    """The fixture's CLIPModel folder, as transformers 4.35 saved it (no max_position_embeddings,
    no hidden_act, ...), loads with transformers' defaults and gives transformers' own embeddings."""
    transformers = pytest.importorskip("transformers")
    from mugstan.backbones.convert import HF_TEXT_DEFAULTS, HF_VISION_DEFAULTS
    from mugstan.backbones.build import build_clip

    for defaults, cls in ((HF_VISION_DEFAULTS, transformers.CLIPVisionConfig), (HF_TEXT_DEFAULTS, transformers.CLIPTextConfig)):
        theirs = cls().to_dict()
        assert {k: theirs[k] for k in defaults} == defaults
    ours = build_clip(None, weights=str(FIXTURE / "hf")).eval()
    hf = transformers.CLIPModel.from_pretrained(str(FIXTURE / "hf")).eval()
    ref = torch.load(FIXTURE / "reference.pt")
    images = ref["video"][0]
    with torch.no_grad():
        hf_image = hf.get_image_features(pixel_values=images)
        hf_text = hf.get_text_features(input_ids=ref["ids"], attention_mask=(ref["ids"] != 0).long())
        hf_image, hf_text = (getattr(x, "pooler_output", x) for x in (hf_image, hf_text))  # transformers 5 returns outputs
        image = ours.encode_frames(images).embeds
        text = ours.encode_text(ref["ids"], ref["ids"] != 0).pooled
    torch.testing.assert_close(image, hf_image, rtol=0, atol=1e-5)
    torch.testing.assert_close(text, hf_text, rtol=0, atol=1e-5)


def test_first_release_stan_conv_layout(tmp_path):
    """The first release's 3D-convolution temporal module (STAN_T_layers.k.layers = Conv3d,
    .temporal_fc) converts to STAN-conv and back."""
    model = randomised(build_model(ModelConfig(backbone="mugstan-tiny", branch="stan", head="mean", stan=STANConfig(time_module="conv"),
                                               temperature=0.01, loss_reduction="sum")))
    released = to_stan_state_dict(model)
    names = set(released["state_dict"])
    assert {"backbone.STAN_T_layers.0.layers.weight", "backbone.STAN_T_layers.3.layers.bias",
            "backbone.STAN_T_layers.0.temporal_fc.weight"} <= names
    assert released["state_dict"]["backbone.STAN_T_layers.1.layers.weight"].shape == (64, 64, 3, 3, 3)
    assert not any("STAN_T_layers.0.self_attn" in k for k in names)
    torch.save(released, tmp_path / "stan_conv.pth")
    state, cfg = convert_stan(tmp_path / "stan_conv.pth")
    assert cfg["stan"]["time_module"] == "conv"
    again = build_model(model_config(cfg)).eval()
    again.load_state_dict(state, strict=True)
    assert torch.equal(outputs(again), outputs(model))


def randomised(model):
    """Every tensor random, so a swapped or dropped key cannot go unnoticed."""
    torch.manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05)
    return model.eval()


def outputs(model):
    g = torch.Generator().manual_seed(0)
    frames = torch.randn(2, 4, 3, 32, 32, generator=g)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]], dtype=torch.bool)
    ids, tmask = model.tokenize(["a red circle moves left", "a square"])
    with torch.no_grad():
        return model.similarity(model.encode_text(ids, tmask), model.encode_video(frames, mask))


def test_stan_round_trip(tmp_path):
    model = randomised(build_model(ModelConfig(backbone="mugstan-tiny", branch="stan", head="mean", temperature=0.01, loss_reduction="sum"))).eval()
    path = tmp_path / "stan_msrvtt.pth"
    torch.save(to_stan_state_dict(model), path)  # mmengine layout: tensors under "state_dict"
    state, cfg = convert_stan(path)
    assert cfg["backbone"] == "mugstan-tiny" and cfg["stan"]["depth"] == 4
    again = build_model(model_config(cfg)).eval()
    missing, unexpected = again.load_state_dict(state, strict=True)
    assert not missing and not unexpected
    assert torch.equal(outputs(again), outputs(model))

    out = tmp_path / "stan.safetensors"
    assert cli(["convert", str(path), str(out), "--format", "stan"]) == 0
    assert torch.equal(outputs(load_converted(out).eval()), outputs(model))


@pytest.mark.parametrize("head", ["meanP", "seqTransf", "tdb_tab"])
def test_clip4clip_and_clip2video_round_trip(tmp_path, head):
    model = randomised(build_model(ModelConfig(backbone="mugstan-tiny", head=head)))
    released = to_clip2video_state_dict(model)
    assert all(k.startswith("clip.") for k in released) == (head == "meanP")
    if head == "tdb_tab":
        assert {"type_position_embeddings.weight", "weight_center", "emb_center", "trans_layernorm.weight",
                "frame2t_attention.resblocks.0.attn.in_proj_weight", "actionClip.resblocks.0.mlp.c_fc.weight"} <= set(released)
    if head == "seqTransf":
        assert "transformerClip.resblocks.3.attn.in_proj_weight" in released
    path = tmp_path / "pytorch_model.bin.4"
    torch.save(released, path)
    state, cfg = convert_clip2video(path)
    assert cfg["head"] == head and cfg["branch"] == "none"
    again = build_model(model_config(cfg)).eval()
    again.load_state_dict(state, strict=True)
    assert torch.equal(outputs(again), outputs(model))


def test_bad_released_checkpoints(tmp_path):
    torch.save({"fc.weight": torch.zeros(2)}, tmp_path / "x.pth")
    with pytest.raises(WeightsError, match="x.pth: not a STAN checkpoint"):
        convert_stan(tmp_path / "x.pth")
    with pytest.raises(WeightsError, match="x.pth: not a CLIP4Clip / CLIP2Video checkpoint"):
        convert_clip2video(tmp_path / "x.pth")
    with pytest.raises(WeightsError, match="no such file"):
        convert_stan(tmp_path / "missing.pth")


def clip2video_reference_layout(centers: int = 5, seq_layers: int = 4) -> dict:
    """A CLIP2Video ``pytorch_model.bin.N`` state dict written from the reference's module names
    (CLIP2Video ``modules/modeling.py``, methods.md §7), not by mugstan's writer: OpenAI CLIP
    under ``clip.``, then the TDB / TAB modules, every tensor random."""
    import open_clip

    torch.manual_seed(5)
    arch = {"embed_dim": 32, "quick_gelu": True, "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 32, "patch_size": 8},
            "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 1, "layers": 4}}
    sd = {f"clip.{k}": v.normal_(0, 0.05) for k, v in open_clip.CLIP(**arch).state_dict().items()}  # OpenAI's key layout
    sd["clip.logit_scale"] = torch.tensor(4.6052)
    e = 32

    def block(prefix: str) -> None:  # the reference's ResidualAttentionBlock (nn.MultiheadAttention inside)
        shapes = {"attn.in_proj_weight": (3 * e, e), "attn.in_proj_bias": (3 * e,), "attn.out_proj.weight": (e, e), "attn.out_proj.bias": (e,),
                  "ln_1.weight": (e,), "ln_1.bias": (e,), "mlp.c_fc.weight": (4 * e, e), "mlp.c_fc.bias": (4 * e,),
                  "mlp.c_proj.weight": (e, 4 * e), "mlp.c_proj.bias": (e,), "ln_2.weight": (e,), "ln_2.bias": (e,)}
        sd.update({f"{prefix}.{name}": torch.randn(shape) * 0.05 for name, shape in shapes.items()})

    sd["frame_position_embeddings.weight"] = torch.randn(77, e)
    for i in range(seq_layers):
        block(f"transformerClip.resblocks.{i}")
    sd["type_position_embeddings.weight"] = torch.randn(2, e)
    block("frame2t_attention.resblocks.0")
    sd["trans_layernorm.weight"], sd["trans_layernorm.bias"] = torch.rand(e) + 0.5, torch.randn(e) * 0.1
    sd["weight_center"], sd["emb_center"] = torch.randn(centers, e) * 0.125, torch.randn(centers, e) * 0.125
    block("actionClip.resblocks.0")
    return sd


def test_clip2video_checkpoint_in_the_reference_layout(tmp_path):
    """Every tensor of a checkpoint in the reference's names lands on the mugstan parameter of the
    same module, and the model loads with nothing missing or left over (7 centres, as for VATEX)."""
    released = clip2video_reference_layout(centers=7)
    torch.save(released, tmp_path / "pytorch_model.bin.2")
    state, cfg = convert_clip2video(tmp_path / "pytorch_model.bin.2")
    assert cfg["head"] == "tdb_tab" and cfg["tab_centers"] == 7 and cfg["seq_layers"] == 4
    model = build_model(model_config(cfg))
    missing, unexpected = model.load_state_dict(state, strict=True)
    assert not missing and not unexpected
    head, clip = model.head, model.backbone.clip
    assert torch.equal(head.transformerClip.resblocks[3].attn.in_proj.weight, released["transformerClip.resblocks.3.attn.in_proj_weight"])
    assert torch.equal(head.frame2t_attention.resblocks[0].mlp.c_proj.bias, released["frame2t_attention.resblocks.0.mlp.c_proj.bias"])
    assert torch.equal(head.actionClip.resblocks[0].ln_2.weight, released["actionClip.resblocks.0.ln_2.weight"])
    assert torch.equal(head.trans_layernorm.bias, released["trans_layernorm.bias"])
    assert torch.equal(head.weight_center, released["weight_center"]) and torch.equal(head.emb_center, released["emb_center"])
    assert torch.equal(head.type_position_embeddings.weight, released["type_position_embeddings.weight"])
    assert torch.equal(clip.visual.proj, released["clip.visual.proj"]) and torch.equal(clip.text_projection, released["clip.text_projection"])
    assert model.logit_scale.log_scale.item() == pytest.approx(4.6052)

    seq = {k: v for k, v in released.items() if k.startswith("clip.") or k.startswith(("frame_position", "transformerClip"))}
    torch.save(seq, tmp_path / "pytorch_model.bin.0")  # CLIP4Clip seqTransf: the same names without TDB / TAB
    state, cfg = convert_clip2video(tmp_path / "pytorch_model.bin.0")
    assert cfg["head"] == "seqTransf"
    build_model(model_config(cfg)).load_state_dict(state, strict=True)


def test_clip2video_scores_follow_the_formula_of_methods_md(tmp_path):
    """A checkpoint in the reference's names, converted, scores text against video as methods.md §3
    writes it (computed here from the released tensors with open_clip's CLIP and torch's own
    attention, not mugstan's modules): S = w s S_global + (1 - w) s S_TAB on raw TAB features."""
    import math

    import open_clip

    released = clip2video_reference_layout()
    torch.save(released, tmp_path / "pytorch_model.bin.2")
    sd, cfg = convert_clip2video(tmp_path / "pytorch_model.bin.2")
    model = build_model(model_config(cfg)).eval()
    model.load_state_dict(sd, strict=True)

    g = torch.Generator().manual_seed(2)
    frames = torch.randn(3, 5, 3, 32, 32, generator=g)
    ids, tmask = model.tokenize(["a red circle moves left", "two squares", "a blue triangle grows slowly"])
    with torch.no_grad():
        ours = model.similarity(model.encode_text(ids, tmask), model.encode_video(frames, torch.ones(3, 5, dtype=torch.bool)))

    # ---- the formula, from the released tensors ---------------------------------------------
    arch = cfg["backbone_config"]
    clip = open_clip.CLIP(**arch).eval()
    clip.load_state_dict({k[5:]: v for k, v in released.items() if k.startswith("clip.")})
    e, heads = 32, 1  # width 32: one head (the converter's rule: heads of width 64, at least one)

    def block(x, prefix):  # the reference's ResidualAttentionBlock: LayerNorm eps 1e-12, QuickGELU, no mask needed here
        p = {k[len(prefix) + 1:]: v for k, v in released.items() if k.startswith(prefix + ".")}
        ln = lambda y, n: F.layer_norm(y, (e,), p[f"{n}.weight"], p[f"{n}.bias"], eps=1e-12)  # noqa: E731
        h = ln(x, "ln_1").transpose(0, 1)  # [S, B, E]
        a, _ = F.multi_head_attention_forward(h, h, h, e, heads, p["attn.in_proj_weight"], p["attn.in_proj_bias"], None, None, False, 0.0,
                                              p["attn.out_proj.weight"], p["attn.out_proj.bias"], training=False, need_weights=False)
        x = x + a.transpose(0, 1)
        h = F.linear(ln(x, "ln_2"), p["mlp.c_fc.weight"], p["mlp.c_fc.bias"])
        return x + F.linear(h * torch.sigmoid(1.702 * h), p["mlp.c_proj.weight"], p["mlp.c_proj.bias"])

    pos, types = released["frame_position_embeddings.weight"], released["type_position_embeddings.weight"]

    def tdb_tokens(f):  # TDB steps 1-3 on f [B, T, E]
        t = f.shape[1]
        d = block(f[:, 1:] - f[:, :-1] + pos[1:t], "frame2t_attention.resblocks.0")
        d = 2 * torch.sigmoid(F.layer_norm(d, (e,), released["trans_layernorm.weight"], released["trans_layernorm.bias"], eps=1e-5)) - 1
        seq = []
        for i in range(t):
            seq.append(f[:, i] + pos[i] + types[1])
            if i < t - 1:
                seq.append(d[:, i] + pos[i] + types[0])
        return torch.stack(seq, 1)

    def aggregate(x):  # x [B, N, E] raw features, every token real
        a = torch.softmax(x @ released["weight_center"].t(), -1)  # [B, N, K]
        r = (a.unsqueeze(-1) * (x.unsqueeze(2) - released["emb_center"])).sum(1)  # [B, K, E]
        return F.normalize(F.normalize(r, dim=-1).mean(1), dim=-1)

    with torch.no_grad():
        f = clip.encode_image(frames.flatten(0, 1)).view(3, 5, e)
        x = tdb_tokens(f)
        for i in range(4):
            x = block(x, f"transformerClip.resblocks.{i}")
        v_g = F.normalize(F.normalize(x[:, ::2] + f, dim=-1).mean(1), dim=-1)
        sub = f[:, ::2]
        motion = block(tdb_tokens(sub), "actionClip.resblocks.0")[:, ::2] + sub
        v_tab = aggregate(torch.cat([f, motion], 1))

        t = clip.token_embedding(ids) + clip.positional_embedding[:ids.shape[1]]
        causal = torch.full((ids.shape[1], ids.shape[1]), float("-inf")).triu_(1)
        for blk in clip.transformer.resblocks:
            t = blk(t, attn_mask=causal)
        tokens = clip.ln_final(t) @ clip.text_projection  # [N, L, E]
        t_g = F.normalize(tokens[torch.arange(3), ids.argmax(-1)], dim=-1)
        words = tmask.clone()
        words[:, 0] = False
        t_tab = torch.stack([aggregate(tokens[n:n + 1, words[n]])[0] for n in range(3)])

    s = math.exp(released["clip.logit_scale"].item())
    expected = 0.5 * s * t_g @ v_g.t() + 0.5 * s * t_tab @ v_tab.t()
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)
