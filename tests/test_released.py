"""Released checkpoints: write a model in the STAN / CLIP2Video layouts, convert back, same outputs."""

import pytest
import torch

from mugstan.backbones.convert import WeightsError
from mugstan.backbones.released import (
    convert_clip2video, convert_stan, load_converted, to_clip2video_state_dict, to_stan_state_dict,
)
from mugstan.cli import main as cli
from mugstan.config import ModelConfig, STANConfig
from mugstan.models import build_model


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
    model = randomised(build_model(ModelConfig(backbone="mugstan-tiny", temporal="stan", temperature=0.01, loss_reduction="sum"))).eval()
    path = tmp_path / "stan_msrvtt.pth"
    torch.save(to_stan_state_dict(model), path)  # mmengine layout: tensors under "state_dict"
    state, cfg = convert_stan(path)
    assert cfg["backbone"] == "mugstan-tiny" and cfg["stan"]["depth"] == 4
    again = build_model(ModelConfig(**{**cfg, "stan": STANConfig(**cfg["stan"])})).eval()
    missing, unexpected = again.load_state_dict(state, strict=True)
    assert not missing and not unexpected
    assert torch.equal(outputs(again), outputs(model))

    out = tmp_path / "stan.safetensors"
    assert cli(["convert", str(path), str(out), "--format", "stan"]) == 0
    assert torch.equal(outputs(load_converted(out).eval()), outputs(model))


@pytest.mark.parametrize("temporal", ["meanP", "seqTransf", "tdb_tab"])
def test_clip4clip_and_clip2video_round_trip(tmp_path, temporal):
    model = randomised(build_model(ModelConfig(backbone="mugstan-tiny", temporal=temporal)))
    released = to_clip2video_state_dict(model)
    assert all(k.startswith("clip.") for k in released) == (temporal == "meanP")
    if temporal == "tdb_tab":
        assert {"type_position_embeddings.weight", "weight_center", "emb_center", "trans_layernorm.weight",
                "frame2t_attention.resblocks.0.attn.in_proj_weight", "actionClip.resblocks.0.mlp.c_fc.weight"} <= set(released)
    if temporal == "seqTransf":
        assert "transformerClip.resblocks.3.attn.in_proj_weight" in released
    path = tmp_path / "pytorch_model.bin.4"
    torch.save(released, path)
    state, cfg = convert_clip2video(path)
    assert cfg["temporal"] == temporal
    again = build_model(ModelConfig(**cfg)).eval()
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
