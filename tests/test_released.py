"""Released checkpoints: the authors' own STAN checkpoint and outputs (../shared/fixtures), and
checkpoints written in the STAN / CLIP4Clip / CLIP2Video authors' key names (reference_layouts.py),
converted and checked tensor by tensor and against the formulas of methods.md."""

import itertools
import math
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from reference_layouts import clip2video_reference_layout, stan_reference_layout

from mugstan.backbones.convert import WeightsError
from mugstan.cli import main as cli
from mugstan.config import model_config
from mugstan.models import build_model
from mugstan.released import convert_clip2video, convert_stan, load_converted

FIXTURE = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "stan_official_tiny"
# The fixture's CLIP has 4 heads of width 16 (vision) and 12 (text); shapes cannot tell heads apart:
# its HuggingFace config (FIXTURE / "hf") gives them.


def require_fixture(folder: Path) -> Path:
    """The authors' STAN fixture: the strongest check of the converter. A checkout without
    ../shared skips its tests; CI (CI=true), which always has ../shared beside the clone, fails."""
    if not (folder / "official.pth").is_file() or not (folder / "hf").is_dir():
        message = f"needs the authors' STAN fixture at {folder}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message + " (CI=true: ../shared must sit beside the clone)")
        pytest.skip(message)
    return folder


@pytest.fixture
def fixture():
    return require_fixture(FIXTURE)


def test_a_missing_fixture_fails_under_ci_and_skips_elsewhere(tmp_path, monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        require_fixture(tmp_path / "stan_official_tiny")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="needs the authors' STAN fixture"):
        require_fixture(tmp_path / "stan_official_tiny")
    assert require_fixture(FIXTURE) == FIXTURE  # here, as in CI, the fixture is present: its tests run


def test_authors_stan_checkpoint_gives_the_authors_outputs(tmp_path, fixture):
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
    assert (
        cli(
            [
                "convert",
                str(FIXTURE / "official.pth"),
                str(out),
                "--format",
                "stan",
                "--clip-config",
                str(FIXTURE / "hf"),
            ]
        )
        == 0
    )
    with torch.no_grad():
        again = load_converted(out, ["model.context_length=16"]).eval().frame_features(ref["video"], mask).embeds
    torch.testing.assert_close(again, ref["emb_frames"], rtol=0, atol=1e-5)


def test_hf_folder_whose_config_holds_only_non_default_keys(fixture):
    """The fixture's CLIPModel folder, as transformers 4.35 saved it (no max_position_embeddings,
    no hidden_act, ...), loads with transformers' defaults and gives transformers' own embeddings."""
    transformers = pytest.importorskip("transformers")
    from mugstan.backbones.build import build_clip
    from mugstan.backbones.convert import HF_TEXT_DEFAULTS, HF_VISION_DEFAULTS

    for defaults, cls in (
        (HF_VISION_DEFAULTS, transformers.CLIPVisionConfig),
        (HF_TEXT_DEFAULTS, transformers.CLIPTextConfig),
    ):
        theirs = cls().to_dict()
        assert {k: theirs[k] for k in defaults} == defaults
    ours = build_clip(None, weights=str(FIXTURE / "hf")).eval()
    hf = transformers.CLIPModel.from_pretrained(str(FIXTURE / "hf")).eval()
    ref = torch.load(FIXTURE / "reference.pt")
    images = ref["video"][0]
    with torch.no_grad():
        hf_image = hf.get_image_features(pixel_values=images)
        hf_text = hf.get_text_features(input_ids=ref["ids"], attention_mask=(ref["ids"] != 0).long())
        hf_image, hf_text = (
            getattr(x, "pooler_output", x) for x in (hf_image, hf_text)
        )  # transformers 5 returns outputs
        image = ours.encode_frames(images).embeds
        text = ours.encode_text(ref["ids"], ref["ids"] != 0).pooled
    torch.testing.assert_close(image, hf_image, rtol=0, atol=1e-5)
    torch.testing.assert_close(text, hf_text, rtol=0, atol=1e-5)


def outputs(model):
    g = torch.Generator().manual_seed(0)
    frames = torch.randn(2, 4, 3, 32, 32, generator=g)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]], dtype=torch.bool)
    ids, tmask = model.tokenize(["a red circle moves left", "a square"])
    with torch.no_grad():
        return model.similarity(model.encode_text(ids, tmask), model.encode_video(frames, mask))


def stan_layout_file(tmp_path, time_module: str) -> tuple[dict, Path]:
    released = stan_reference_layout(time_module)
    path = tmp_path / f"stan_{time_module}.pth"
    torch.save(released, path)
    return released["state_dict"], path


def test_stan_checkpoint_in_the_authors_layout(tmp_path):
    """A checkpoint in the authors' names (transformers' CLIP modules, not mugstan's writer): each
    tensor lands on the mugstan parameter of the same module (q, k, v packed in that order), the
    model loads with nothing missing or left over, its CLIP encodes as transformers' CLIPModel
    with the same tensors, and ``mugstan convert`` stores the same model."""
    from transformers import CLIPConfig, CLIPModel

    released, path = stan_layout_file(tmp_path, "self")
    state, cfg = convert_stan(path)
    assert cfg["backbone"] == "mugstan-tiny" and cfg["stan"] == {"depth": 4, "time_module": "self", "max_frames": 64}
    model = build_model(model_config(cfg)).eval()
    missing, unexpected = model.load_state_dict(state, strict=True)
    assert not missing and not unexpected
    r = lambda name: released[f"backbone.{name}"]  # noqa: E731
    qkv = lambda prefix, part: torch.cat([r(f"{prefix}.self_attn.{x}_proj.{part}") for x in "qkv"])  # noqa: E731
    branch, clip = model.branch, model.backbone.clip
    assert torch.equal(branch.time_embed.weight, r("STAN_time_embed.weight"))
    assert torch.equal(branch.temporal[2].attn.in_proj.weight, qkv("STAN_T_layers.2", "weight"))
    assert torch.equal(branch.temporal[2].attn.in_proj.bias, qkv("STAN_T_layers.2", "bias"))
    assert torch.equal(branch.temporal[1].attn.out_proj.weight, r("STAN_T_layers.1.self_attn.out_proj.weight"))
    assert torch.equal(branch.temporal[3].ln_1.bias, r("STAN_T_layers.3.layer_norm1.bias"))
    assert torch.equal(branch.temporal[0].temporal_fc.weight, r("STAN_T_layers.0.temporal_fc.weight"))
    assert torch.equal(branch.spatial[1].attn.in_proj_weight, qkv("STAN_S_layers.1", "weight"))
    assert torch.equal(branch.spatial[3].mlp.c_fc.weight, r("STAN_S_layers.3.mlp.fc1.weight"))
    assert torch.equal(branch.spatial[0].mlp.c_proj.bias, r("STAN_S_layers.0.mlp.fc2.bias"))
    assert torch.equal(branch.spatial[2].ln_2.weight, r("STAN_S_layers.2.layer_norm2.weight"))
    assert torch.equal(clip.visual.proj, r("visual_projection.weight").t())
    assert torch.equal(clip.text_projection, released["text_backbone.text_projection.weight"].t())

    # the CLIP towers against transformers' own CLIPModel holding the released tensors
    hf_cfg = CLIPConfig(
        text_config={
            "hidden_size": 64,
            "num_attention_heads": 2,
            "intermediate_size": 256,
            "hidden_act": "quick_gelu",
            "num_hidden_layers": 2,
            "vocab_size": 49408,
            "max_position_embeddings": 77,
        },
        vision_config={
            "hidden_size": 64,
            "num_attention_heads": 2,
            "intermediate_size": 256,
            "hidden_act": "quick_gelu",
            "num_hidden_layers": 4,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=64,
    )
    hf = CLIPModel(hf_cfg).eval()
    embeddings = ("class_embedding", "patch_embedding.weight", "position_embedding.weight")
    hf_sd = {
        (
            "vision_model.embeddings."
            if k[9:] in embeddings
            else "vision_model.encoder."
            if k.startswith("backbone.layers.")
            else ""
            if k == "backbone.visual_projection.weight"
            else "vision_model."
        )
        + k[9:]: v
        for k, v in released.items()
        if k.startswith("backbone.") and not k.startswith("backbone.STAN_")
    }
    hf_sd.update({k[len("text_backbone.") :]: v for k, v in released.items() if k.startswith("text_backbone.")})
    missing, unexpected = hf.load_state_dict(hf_sd, strict=False)
    assert not unexpected and all("position_ids" in k or k == "logit_scale" for k in missing)
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    ids, tmask = model.tokenize(["a red circle moves left", "a square"])
    with torch.no_grad():
        hf_image = hf.get_image_features(pixel_values=images)
        hf_text = hf.get_text_features(input_ids=ids, attention_mask=tmask.long())
        hf_image, hf_text = (
            getattr(x, "pooler_output", x) for x in (hf_image, hf_text)
        )  # transformers 5 returns outputs
        # measured: 1.4e-6 (fp32, SDPA against transformers' eager attention)
        torch.testing.assert_close(model.backbone.encode_frames(images).embeds, hf_image, rtol=0, atol=5e-6)
        torch.testing.assert_close(model.backbone.encode_text(ids, tmask).pooled, hf_text, rtol=0, atol=5e-6)

    out = tmp_path / "stan.safetensors"
    assert cli(["convert", str(path), str(out), "--format", "stan"]) == 0
    assert torch.equal(outputs(load_converted(out).eval()), outputs(model))


def test_stan_conv_checkpoint_in_the_authors_layout(tmp_path):
    """The first release's 3D-convolution temporal module (``STAN_T_layers.k.layers`` = Conv3d,
    ``.temporal_fc``) converts to STAN-conv, and each converted temporal module computes methods.md
    §4 from the released tensors, written here as an explicit sum over the 27 kernel offsets
    (time, row, column) of the patch grid, patch index = row * 4 + column."""
    released, path = stan_layout_file(tmp_path, "conv")
    state, cfg = convert_stan(path)
    assert cfg["stan"] == {"depth": 4, "time_module": "conv", "max_frames": 64}
    model = build_model(model_config(cfg)).eval()
    missing, unexpected = model.load_state_dict(state, strict=True)
    assert not missing and not unexpected
    assert torch.equal(
        model.branch.spatial[1].attn.in_proj_bias,
        torch.cat([released[f"backbone.STAN_S_layers.1.self_attn.{x}_proj.bias"] for x in "qkv"]),
    )

    b, g, t, d = 2, 4, 5, 64
    patches = torch.randn(b, g * g, t, d, generator=torch.Generator().manual_seed(3))
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.bool)
    grid = (patches * mask[:, None, :, None]).view(b, g, g, t, d)  # padded frames enter as zeros
    padded = F.pad(grid, (0, 0, 1, 1, 1, 1, 1, 1))  # one zero on each side of rows, columns, time
    for k in range(4):
        w, bias = (
            released[f"backbone.STAN_T_layers.{k}.layers.weight"],
            released[f"backbone.STAN_T_layers.{k}.layers.bias"],
        )
        conv = bias.expand(b, g, g, t, d).clone()
        for dt, dr, dc in itertools.product(range(3), repeat=3):
            window = padded[:, dr : dr + g, dc : dc + g, dt : dt + t]  # [B, g, g, T, D]
            conv += window @ w[:, :, dt, dr, dc].t()
        fc_w, fc_b = (
            released[f"backbone.STAN_T_layers.{k}.temporal_fc.weight"],
            released[f"backbone.STAN_T_layers.{k}.temporal_fc.bias"],
        )
        expected = patches + (conv @ fc_w.t() + fc_b).view(b, g * g, t, d)
        with torch.no_grad():
            ours = model.branch.temporal[k](patches, mask)
        torch.testing.assert_close(ours, expected, rtol=0, atol=1e-5)  # measured 4e-6 (fp32 sums in another order)


def test_clip4clip_heads_from_the_reference_layout(tmp_path):
    """CLIP4Clip checkpoints in the reference's names: meanP (only ``clip.*``) and seqTransf
    (``frame_position_embeddings``, ``transformerClip``) are told apart and load strictly."""
    for head, name in (("meanP", "pytorch_model.bin.1"), ("seqTransf", "pytorch_model.bin.0")):
        released = clip2video_reference_layout(head=head)
        torch.save(released, tmp_path / name)
        state, cfg = convert_clip2video(tmp_path / name)
        assert cfg["head"] == head and cfg["branch"] == "none"
        model = build_model(model_config(cfg))
        missing, unexpected = model.load_state_dict(state, strict=True)
        assert not missing and not unexpected
        assert torch.equal(model.backbone.clip.visual.proj, released["clip.visual.proj"])
        if head == "seqTransf":
            assert cfg["seq_layers"] == 4
            assert torch.equal(
                model.head.frame_position_embeddings.weight, released["frame_position_embeddings.weight"]
            )
            assert torch.equal(
                model.head.transformer.resblocks[2].attn.in_proj.bias,
                released["transformerClip.resblocks.2.attn.in_proj_bias"],
            )
            assert torch.equal(
                model.head.transformer.resblocks[1].mlp.c_fc.weight,
                released["transformerClip.resblocks.1.mlp.c_fc.weight"],
            )


def test_bad_released_checkpoints(tmp_path):
    torch.save({"fc.weight": torch.zeros(2)}, tmp_path / "x.pth")
    with pytest.raises(WeightsError, match="x.pth: not a STAN checkpoint"):
        convert_stan(tmp_path / "x.pth")
    with pytest.raises(WeightsError, match="x.pth: not a CLIP4Clip / CLIP2Video checkpoint"):
        convert_clip2video(tmp_path / "x.pth")
    with pytest.raises(WeightsError, match="no such file"):
        convert_stan(tmp_path / "missing.pth")


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
    assert torch.equal(
        head.transformerClip.resblocks[3].attn.in_proj.weight,
        released["transformerClip.resblocks.3.attn.in_proj_weight"],
    )
    assert torch.equal(
        head.frame2t_attention.resblocks[0].mlp.c_proj.bias, released["frame2t_attention.resblocks.0.mlp.c_proj.bias"]
    )
    assert torch.equal(head.actionClip.resblocks[0].ln_2.weight, released["actionClip.resblocks.0.ln_2.weight"])
    assert torch.equal(head.trans_layernorm.bias, released["trans_layernorm.bias"])
    assert torch.equal(head.weight_center, released["weight_center"]) and torch.equal(
        head.emb_center, released["emb_center"]
    )
    assert torch.equal(head.type_position_embeddings.weight, released["type_position_embeddings.weight"])
    assert torch.equal(clip.visual.proj, released["clip.visual.proj"]) and torch.equal(
        clip.text_projection, released["clip.text_projection"]
    )
    assert model.logit_scale.log_scale.item() == pytest.approx(4.6052)

    seq = {
        k: v
        for k, v in released.items()
        if k.startswith("clip.") or k.startswith(("frame_position", "transformerClip"))
    }
    torch.save(seq, tmp_path / "pytorch_model.bin.0")  # CLIP4Clip seqTransf: the same names without TDB / TAB
    state, cfg = convert_clip2video(tmp_path / "pytorch_model.bin.0")
    assert cfg["head"] == "seqTransf"
    build_model(model_config(cfg)).load_state_dict(state, strict=True)


def reference_block(x, released: dict, prefix: str, heads: int = 1, key_mask=None):
    """The reference's ResidualAttentionBlock on x [B, S, E] from the released tensors under
    ``prefix``: LayerNorm eps 1e-12, torch's own multi-head attention, QuickGELU MLP. key_mask
    [B, S] bool (False: padded key), added as -1e6 as CLIP4Clip's extended_video_mask does."""
    e = x.shape[-1]
    p = {k[len(prefix) + 1 :]: v for k, v in released.items() if k.startswith(prefix + ".")}
    ln = lambda y, n: F.layer_norm(y, (e,), p[f"{n}.weight"], p[f"{n}.bias"], eps=1e-12)  # noqa: E731
    mask = None
    if key_mask is not None:
        mask = (
            ((~key_mask).float() * -1e6)[:, None, :].expand(-1, x.shape[1], -1).repeat_interleave(heads, 0)
        )  # [B*heads, S, S]
    h = ln(x, "ln_1").transpose(0, 1)  # [S, B, E]
    a, _ = F.multi_head_attention_forward(
        h,
        h,
        h,
        e,
        heads,
        p["attn.in_proj_weight"],
        p["attn.in_proj_bias"],
        None,
        None,
        False,
        0.0,
        p["attn.out_proj.weight"],
        p["attn.out_proj.bias"],
        training=False,
        need_weights=False,
        attn_mask=mask,
    )
    x = x + a.transpose(0, 1)
    h = F.linear(ln(x, "ln_2"), p["mlp.c_fc.weight"], p["mlp.c_fc.bias"])
    return x + F.linear(h * torch.sigmoid(1.702 * h), p["mlp.c_proj.weight"], p["mlp.c_proj.bias"])


def reference_clip(released: dict, cfg: dict):
    """open_clip's CLIP holding the released ``clip.*`` tensors (OpenAI's layout)."""
    import open_clip

    clip = open_clip.CLIP(**cfg["backbone_config"]).eval()
    clip.load_state_dict({k[5:]: v for k, v in released.items() if k.startswith("clip.")})
    return clip


def openai_text_tokens(clip, ids):
    """OpenAI CLIP's projected text tokens [N, L, E] for ids [N, L] (shorter than the context)."""
    t = clip.token_embedding(ids) + clip.positional_embedding[: ids.shape[1]]
    causal = torch.full((ids.shape[1], ids.shape[1]), float("-inf")).triu_(1)
    for blk in clip.transformer.resblocks:
        t = blk(t, attn_mask=causal)
    return clip.ln_final(t) @ clip.text_projection


@pytest.mark.parametrize("head", ["meanP", "seqTransf"])
def test_clip4clip_scores_follow_the_formula_of_methods_md(tmp_path, head):
    """A CLIP4Clip checkpoint in the reference's names, converted, scores as methods.md §2 writes
    it (from the released tensors with open_clip's CLIP and torch's attention): meanP
    v = norm(mean over real frames of norm(f)); seqTransf the same on X + f, X = the 4 blocks over
    f + frame_position[0:T] with padded frames masked as keys; S = s t·v, t = norm(EOT token)."""
    released = clip2video_reference_layout(head=head)
    torch.save(released, tmp_path / "pytorch_model.bin.0")
    sd, cfg = convert_clip2video(tmp_path / "pytorch_model.bin.0")
    model = build_model(model_config(cfg)).eval()
    model.load_state_dict(sd, strict=True)

    frames = torch.randn(3, 5, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 0, 0, 0]], dtype=torch.bool)
    ids, tmask = model.tokenize(["a red circle moves left", "two squares", "a blue triangle grows slowly"])
    with torch.no_grad():
        ours = model.similarity(model.encode_text(ids, tmask), model.encode_video(frames, mask))

    clip = reference_clip(released, cfg)
    with torch.no_grad():
        f = clip.encode_image(frames.flatten(0, 1)).view(3, 5, 32)
        if head == "seqTransf":
            x = f + released["frame_position_embeddings.weight"][:5]
            for i in range(4):
                x = reference_block(x, released, f"transformerClip.resblocks.{i}", key_mask=mask)
            f = x + f
        w = mask.float().unsqueeze(-1)
        v = F.normalize((F.normalize(f, dim=-1) * w).sum(1) / w.sum(1), dim=-1)
        t = F.normalize(openai_text_tokens(clip, ids)[torch.arange(3), ids.argmax(-1)], dim=-1)
    expected = math.exp(released["clip.logit_scale"].item()) * t @ v.t()
    # measured 2.4e-6 (meanP) and 2.9e-6 (seqTransf) on scores of size ~30: fp32, another attention kernel
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-5)


def test_clip2video_scores_follow_the_formula_of_methods_md(tmp_path):
    """A checkpoint in the reference's names, converted, scores text against video as methods.md §3
    writes it (computed here from the released tensors with open_clip's CLIP and torch's own
    attention, not mugstan's modules): S = w s S_global + (1 - w) s S_TAB on raw TAB features."""
    released = clip2video_reference_layout()
    torch.save(released, tmp_path / "pytorch_model.bin.2")
    sd, cfg = convert_clip2video(tmp_path / "pytorch_model.bin.2")
    model = build_model(model_config(cfg)).eval()
    model.load_state_dict(sd, strict=True)

    g = torch.Generator().manual_seed(2)
    frames = torch.randn(3, 5, 3, 32, 32, generator=g)
    ids, tmask = model.tokenize(["a red circle moves left", "two squares", "a blue triangle grows slowly"])
    with torch.no_grad():
        ours = model.similarity(
            model.encode_text(ids, tmask), model.encode_video(frames, torch.ones(3, 5, dtype=torch.bool))
        )

    # ---- the formula, from the released tensors ---------------------------------------------
    clip = reference_clip(released, cfg)
    e = 32  # width 32: one head (the converter's rule: heads of width 64, at least one)
    block = lambda x, prefix: reference_block(x, released, prefix)  # noqa: E731
    pos, types = released["frame_position_embeddings.weight"], released["type_position_embeddings.weight"]

    def tdb_tokens(f):  # TDB steps 1-3 on f [B, T, E]
        t = f.shape[1]
        d = block(f[:, 1:] - f[:, :-1] + pos[1:t], "frame2t_attention.resblocks.0")
        d = (
            2
            * torch.sigmoid(
                F.layer_norm(d, (e,), released["trans_layernorm.weight"], released["trans_layernorm.bias"], eps=1e-5)
            )
            - 1
        )
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

        tokens = openai_text_tokens(clip, ids)  # [N, L, E]
        t_g = F.normalize(tokens[torch.arange(3), ids.argmax(-1)], dim=-1)
        words = tmask.clone()
        words[:, 0] = False
        t_tab = torch.stack([aggregate(tokens[n : n + 1, words[n]])[0] for n in range(3)])

    s = math.exp(released["clip.logit_scale"].item())
    expected = 0.5 * s * t_g @ v_g.t() + 0.5 * s * t_tab @ v_tab.t()
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-5)  # measured 3.8e-6 on scores of size ~30 (fp32)
