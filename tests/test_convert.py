"""Weight loading: HuggingFace CLIPModel and OpenAI .pt against the real things, bad inputs."""

import json

import open_clip
import pytest
import torch

from mugstan.backbones.build import build_clip
from mugstan.backbones.clip import Tokenizer
from mugstan.backbones.convert import WeightsError, load_clip_weights
from mugstan.cli import main as cli

transformers = pytest.importorskip("transformers")

# OpenAI-style shapes (heads = width / 64) so the architecture can be inferred from the tensors.
OPENAI_TINY = {
    "embed_dim": 32,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 128, "head_width": 64, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 128, "heads": 2, "layers": 2},
}


def tiny_hf_model(hidden_act="quick_gelu"):
    cfg = transformers.CLIPConfig(
        text_config=dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
                         max_position_embeddings=77, vocab_size=49408, hidden_act=hidden_act,
                         bos_token_id=49406, eos_token_id=49407, pad_token_id=0),
        vision_config=dict(hidden_size=64, intermediate_size=256, num_hidden_layers=3, num_attention_heads=2,
                           image_size=32, patch_size=8, hidden_act=hidden_act),
        projection_dim=32,
    )
    torch.manual_seed(0)
    model = transformers.CLIPModel(cfg).eval()
    with torch.no_grad():  # HF initialises some tensors to constants; make every weight count
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model


@pytest.mark.parametrize("safe", [True, False], ids=["safetensors", "bin"])
def test_hf_clipmodel_matches_transformers(tmp_path, safe):
    hf = tiny_hf_model()
    hf.save_pretrained(tmp_path, safe_serialization=safe)
    ours = build_clip(None, weights=tmp_path)
    images = torch.randn(3, 3, 32, 32)
    ids, mask = Tokenizer(20)(["a red circle slides to the left", "a blue square", "x " * 40])
    with torch.no_grad():
        ref_img = hf.get_image_features(pixel_values=images)
        ref_txt = hf.get_text_features(input_ids=ids, attention_mask=mask.long())
        ref_img = getattr(ref_img, "pooler_output", ref_img)
        ref_txt = getattr(ref_txt, "pooler_output", ref_txt)
        img = ours.encode_frames(images).embeds
        txt = ours.encode_text(ids, mask).pooled
    assert (img - ref_img).abs().max() < 1e-4
    assert (txt - ref_txt).abs().max() < 1e-4


def openai_state_dict():
    torch.manual_seed(1)
    model = open_clip.CLIP(**OPENAI_TINY)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    sd.update(input_resolution=torch.tensor(32), context_length=torch.tensor(77), vocab_size=torch.tensor(49408))
    return model, sd


class _TensorHolder(torch.nn.Module):
    """A TorchScript-able module whose state dict is exactly the given OpenAI tensors."""

    def __init__(self, sd):
        super().__init__()
        self._names = list(sd)
        for i, v in enumerate(sd.values()):
            self.register_buffer(f"t{i}", v)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _script_archive(sd, path):
    """Write a TorchScript archive whose state_dict keys are OpenAI's (nested submodules)."""
    root = torch.nn.Module()
    for key, value in sd.items():
        *parents, leaf = key.split(".")
        module = root
        for name in parents:
            if not hasattr(module, name):
                module.add_module(name, torch.nn.Module())
            module = getattr(module, name)
        module.register_buffer(leaf, value)
    torch.jit.save(torch.jit.script(root), str(path))


@pytest.mark.parametrize("kind", ["torchscript", "plain"])
def test_openai_pt_round_trips_exactly(tmp_path, kind):
    model, sd = openai_state_dict()
    path = tmp_path / "ViT-tiny.pt"
    if kind == "torchscript":
        _script_archive(sd, path)
    else:
        torch.save(sd, path)
    weights = load_clip_weights(path)
    assert weights.format == "openai"
    assert set(weights.state_dict) == set(model.state_dict())
    for k, v in model.state_dict().items():
        assert torch.equal(weights.state_dict[k], v), k
    ours = build_clip(None, weights=path)
    images = torch.randn(2, 3, 32, 32)
    assert torch.equal(ours.encode_frames(images).embeds, model.eval().encode_image(images))

    # convert to open_clip-layout safetensors and back, via the CLI
    out = tmp_path / "clip.safetensors"
    assert cli(["convert", str(path), str(out)]) == 0
    again = load_clip_weights(out)
    assert again.config["vision_cfg"]["width"] == 128
    for k, v in model.state_dict().items():
        assert torch.equal(again.state_dict[k], v), k
    assert torch.equal(build_clip(None, weights=out).encode_frames(images).embeds, ours.encode_frames(images).embeds)


def test_named_backbone_with_local_weights(tmp_path):
    torch.manual_seed(2)
    ref = build_clip("mugstan-tiny")
    path = tmp_path / "tiny.safetensors"
    from mugstan.backbones.convert import save_safetensors

    save_safetensors(ref.clip.state_dict(), path)
    loaded = build_clip("mugstan-tiny", weights=path)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(loaded.encode_frames(x).embeds, ref.encode_frames(x).embeds)


def test_hf_conversion_via_cli(tmp_path, capsys):
    tiny_hf_model().save_pretrained(tmp_path / "hf")
    out = tmp_path / "from_hf.safetensors"
    assert cli(["convert", str(tmp_path / "hf"), str(out), "--format", "hf"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert load_clip_weights(out).config["text_cfg"]["heads"] == 2


def test_bad_inputs_name_the_file_and_problem(tmp_path):
    with pytest.raises(WeightsError, match="no such file"):
        load_clip_weights(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(bytes(range(256)) * 10)
    with pytest.raises(WeightsError, match="junk.pt: cannot be read"):
        load_clip_weights(junk)
    (tmp_path / "emptydir").mkdir()
    with pytest.raises(WeightsError, match="needs config.json"):
        load_clip_weights(tmp_path / "emptydir")
    notclip = tmp_path / "notclip.pt"
    torch.save({"fc.weight": torch.zeros(2, 2)}, notclip)
    with pytest.raises(WeightsError, match="notclip.pt: not a CLIP ViT state dict"):
        load_clip_weights(notclip)

    _, sd = openai_state_dict()
    extra = dict(sd, **{"visual.extra_head.weight": torch.zeros(3)})
    torch.save(extra, tmp_path / "extra.pt")
    with pytest.raises(WeightsError, match=r"(?s)extra.pt.*unexpected: visual.extra_head.weight"):
        build_clip(None, weights=tmp_path / "extra.pt")
    # right architecture name, wrong checkpoint: shapes differ
    torch.save(sd, tmp_path / "wide.pt")
    with pytest.raises(WeightsError, match=r"(?s)wide.pt.*shape mismatch: .*visual.conv1.weight"):
        build_clip("mugstan-tiny", weights=tmp_path / "wide.pt")
    bad_cfg = tmp_path / "badcfg"
    bad_cfg.mkdir()
    (bad_cfg / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(WeightsError, match="not a CLIPModel config"):
        load_clip_weights(bad_cfg)
    assert cli(["convert", str(tmp_path / "extra.pt"), str(tmp_path / "out.pt")]) == 2


# ---- no model with guessed head counts ----------------------------------------------------------------
PACKAGED = __import__("mugstan.demo", fromlist=["PACKAGED_CLIP"]).PACKAGED_CLIP


def unnamed_clip_file(path):
    """An open_clip-layout file without metadata whose shapes are no named architecture's (3 heads
    of width 32: a head-width-64 guess would build 1 head of width 96)."""
    from mugstan.backbones.convert import save_safetensors

    torch.manual_seed(3)
    config = {
        "embed_dim": 32,
        "quick_gelu": True,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 96, "head_width": 32, "patch_size": 8},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 96, "heads": 3, "layers": 1},
    }
    save_safetensors(open_clip.CLIP(**config).state_dict(), path)
    return path


def test_weights_without_architecture_build_only_with_known_heads(tmp_path, capsys):
    from mugstan.backbones.convert import save_safetensors
    from mugstan.config import ConfigError

    # the packaged CLIP records mugstan-tiny's architecture: 2 heads in each tower, as mugstan-tiny
    packaged = build_clip(None, weights=PACKAGED)
    assert (packaged.vision_heads, packaged.text_heads) == (2, 2)
    named = build_clip("mugstan-tiny", weights=PACKAGED)
    ids, mask = Tokenizer(16)(["a red circle moves left"])
    with torch.no_grad():
        assert torch.equal(packaged.encode_text(ids, mask).pooled, named.encode_text(ids, mask).pooled)

    # no metadata, shapes of a named architecture: that architecture's head counts
    bare = tmp_path / "bare.safetensors"
    save_safetensors(named.clip.state_dict(), bare)
    weights = load_clip_weights(bare)
    assert weights.config["vision_cfg"]["head_width"] == 32 and weights.config["text_cfg"]["heads"] == 2
    assert (build_clip(None, weights=bare).vision_heads, build_clip(None, weights=bare).text_heads) == (2, 2)

    # no metadata, shapes of no named architecture: refused, one line naming model.backbone
    unnamed = unnamed_clip_file(tmp_path / "unnamed.safetensors")
    assert load_clip_weights(unnamed).config is None
    with pytest.raises(
        ConfigError, match="model.backbone is null but .*unnamed.safetensors.* head counts cannot be known"
    ) as err:
        build_clip(None, weights=unnamed)
    assert "\n" not in str(err.value) and "model.backbone_config" in str(err.value)
    assert cli(["convert", str(unnamed), str(tmp_path / "out.safetensors")]) == 2
    assert "head counts cannot be known" in capsys.readouterr().err and not (tmp_path / "out.safetensors").exists()
    # the architecture given, the same file loads
    config = {
        "embed_dim": 32,
        "quick_gelu": True,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 96, "head_width": 32, "patch_size": 8},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 96, "heads": 3, "layers": 1},
    }
    assert build_clip(None, weights=unnamed, config=config).text_heads == 3


def test_a_run_on_a_weights_file_records_the_architecture(tmp_path):
    """model.backbone null + weights: the built model's config holds the file's architecture, so its
    checkpoints rebuild (eval, index, embed) without the file; the demo's CLIP export records it too."""
    import shutil

    from safetensors import safe_open

    from mugstan.config import ExperimentConfig, ModelConfig
    from mugstan.demo import export_clip
    from mugstan.engine.checkpoint import load_model, save_checkpoint
    from mugstan.models import build_model

    weights = shutil.copy(PACKAGED, tmp_path / "clip.safetensors")
    cfg = ExperimentConfig(
        model=ModelConfig(backbone=None, weights=str(weights), branch="none", head="meanP", context_length=16)
    )
    model = build_model(cfg.model)
    assert cfg.model.backbone_config["text_cfg"]["heads"] == 2 and model.backbone.text_heads == 2
    save_checkpoint(tmp_path / "ckpt", model, cfg)
    (tmp_path / "clip.safetensors").unlink()
    again, _ = load_model(tmp_path / "ckpt")
    assert again.backbone.text_heads == 2 and again.backbone.vision_heads == 2
    for (k, v), w in zip(model.state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.equal(v, w), k

    out = export_clip(tmp_path / "ckpt", tmp_path / "exported.safetensors")
    with safe_open(str(out), "pt") as f:
        assert json.loads(f.metadata()["config"])["vision_cfg"]["head_width"] == 32
    assert build_clip(None, weights=out).text_heads == 2


def test_convert_stan_assumes_head_width_64_only_for_openai_shapes(tmp_path, capsys):
    from reference_layouts import stan_reference_layout

    from mugstan.backbones.build import model_from_config, named_config
    from mugstan.released import backbone_fields, match_backbone

    for name in (
        "ViT-B-32",
        "ViT-B-16",
        "ViT-L-14",
        "ViT-L-14-336",
    ):  # the released OpenAI shapes (meta device: no memory)
        with torch.device("meta"):
            sd = model_from_config(named_config(name)).state_dict()
        assert match_backbone(sd, name) == f"{name}-quickgelu"
    with torch.device("meta"):
        sd = model_from_config(named_config("ViT-H-14")).state_dict()  # heads of width 80
    with pytest.raises(WeightsError, match="ViT-H-14: its CLIP .* none of the released OpenAI ones .*--clip-config"):
        backbone_fields(sd, "ViT-H-14")

    # a STAN checkpoint in the authors' layout whose CLIP has heads of width 32 (96 wide, 3 heads):
    # no released OpenAI shape
    torch.save(stan_reference_layout(depth=1, width=96, heads=3), tmp_path / "stan.pth")
    assert cli(["convert", str(tmp_path / "stan.pth"), str(tmp_path / "stan.safetensors"), "--format", "stan"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--clip-config" in err and err.count("\n") == 1
    assert not (tmp_path / "stan.safetensors").exists()


def test_an_older_checkpoint_without_its_architecture_names_the_fix(tmp_path):
    """A checkpoint whose config.yaml has model.backbone null and no backbone_config (written before
    runs recorded it) is refused in one line naming the overrides, and loads with them."""
    import yaml

    from mugstan.config import ExperimentConfig, ModelConfig
    from mugstan.engine.checkpoint import load_model, save_checkpoint
    from mugstan.errors import UserError
    from mugstan.models import build_model

    cfg = ExperimentConfig(model=ModelConfig(backbone="mugstan-tiny", branch="none", head="meanP", context_length=16))
    save_checkpoint(tmp_path / "ckpt", build_model(cfg.model), cfg)
    raw = yaml.safe_load((tmp_path / "ckpt" / "config.yaml").read_text())
    raw["model"].update(backbone=None, weights="old/clip.safetensors")
    (tmp_path / "ckpt" / "config.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(
        UserError, match=r"model.backbone is null .* model.backbone=NAME, or model.backbone_config"
    ) as err:
        load_model(tmp_path / "ckpt")
    assert "\n" not in str(err.value)
    assert load_model(tmp_path / "ckpt", overrides=["model.backbone=mugstan-tiny"])[0].backbone.text_heads == 2
