"""CLIP backbone: layer taps, text features, tokenizer."""

import pytest
import torch
import torch.nn.functional as F
from data_fixtures import hf_cache_snapshot

from mugstan.backbones.build import build_clip, list_models
from mugstan.backbones.clip import EOT_TOKEN, SOT_TOKEN, Tokenizer


def test_taps_match_plain_forward(tiny_clip):
    frames = torch.randn(5, 3, 32, 32)
    n = tiny_clip.vision_layers
    out = tiny_clip.encode_frames(frames, taps=range(n))
    assert sorted(out.hidden) == list(range(n))
    assert torch.equal(out.hidden[n - 1], out.last)
    assert out.hidden[0].shape == (5, 1 + tiny_clip.num_patches, tiny_clip.vision_width)
    torch.testing.assert_close(out.embeds, tiny_clip.clip.encode_image(frames), rtol=0, atol=1e-6)
    # taps by negative index are the same blocks
    neg = tiny_clip.encode_frames(frames, taps=[-2, -1])
    assert sorted(neg.hidden) == [n - 2, n - 1]
    with pytest.raises(ValueError, match="out of range"):
        tiny_clip.encode_frames(frames, taps=[n])


def test_wrong_frame_size_names_the_fix(tiny_clip):
    with pytest.raises(ValueError, match="data.image_size=32"):
        tiny_clip.encode_frames(torch.randn(2, 3, 64, 64))


def test_text_features_match_open_clip(tiny_clip):
    ids, mask = Tokenizer(16)(["a red circle moves left", "the blue square grows"])
    out = tiny_clip.encode_text(ids, mask)
    ref = tiny_clip.clip.encode_text(F.pad(ids, (0, 77 - 16)))
    torch.testing.assert_close(out.pooled, ref, rtol=0, atol=1e-5)
    assert out.tokens.shape == (2, 16, tiny_clip.embed_dim)
    eot = ids.argmax(-1)
    torch.testing.assert_close(out.tokens[torch.arange(2), eot], out.pooled)
    assert torch.equal(out.mask, mask)


def test_padding_does_not_change_pooled(tiny_clip):
    short, _ = Tokenizer(8)(["a red circle"])
    long, _ = Tokenizer(24)(["a red circle"])
    torch.testing.assert_close(
        tiny_clip.encode_text(short).pooled, tiny_clip.encode_text(long).pooled, rtol=0, atol=1e-5
    )


def test_tokenizer_keeps_eot_when_truncating():
    tok = Tokenizer(10)
    ids, mask = tok(["one two three four five six seven eight nine ten eleven twelve", "hi"])
    assert ids.shape == (2, 10) and ids.dtype == torch.long
    assert ids[0, 0] == SOT_TOKEN and ids[0, -1] == EOT_TOKEN and mask[0].all()
    assert ids[1, 0] == SOT_TOKEN and ids[1, 2] == EOT_TOKEN
    assert (ids[1, 3:] == 0).all() and mask[1].tolist() == [True] * 3 + [False] * 7
    assert tok.encode("hi") == [SOT_TOKEN, 1883, EOT_TOKEN]
    with pytest.raises(TypeError, match="caption must be a string"):
        tok([None])


def test_build_clip_errors():
    assert "mugstan-tiny" in list_models() and "ViT-B-32" in list_models()
    with pytest.raises(ValueError, match="unknown backbone 'ViT-X'"):
        build_clip("ViT-X")
    with pytest.raises(ValueError, match="needs a model name or a weights file"):
        build_clip(None)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ViT-B-32", "ViT-B-16"])
def test_openai_tag_builds_quickgelu_blocks(tmp_path, name):
    """OpenAI's weights were trained with QuickGELU: `model.pretrained: openai` must build it in
    every block. The tag's download is pointed at a local file in OpenAI's key layout (a local
    Hugging Face cache, offline), so the real open_clip tag path runs."""
    import os
    import subprocess
    import sys

    import open_clip
    from safetensors.torch import save_file

    repo_id = open_clip.get_pretrained_cfg(name, "openai")["hf_hub"].strip("/")
    torch.manual_seed(0)
    weights = {
        k: v.half().contiguous() for k, v in open_clip.create_model(name).state_dict().items()
    }  # fp16, as OpenAI released
    save_file(weights, str(hf_cache_snapshot(tmp_path / "hub", repo_id) / "open_clip_model.safetensors"))
    probe = weights["visual.transformer.resblocks.0.mlp.c_fc.weight"].float()
    code = (
        "import sys, torch\n"
        "from mugstan.backbones.build import build_clip\n"
        f"b = build_clip({name!r}, pretrained='openai')\n"
        "acts = [type(blk.mlp.gelu).__name__ for blk in [*b.visual.transformer.resblocks, *b.text_blocks]]\n"
        "print(','.join(sorted(set(acts))))\n"
        "torch.save(b.visual.transformer.resblocks[0].mlp.c_fc.weight.detach(), sys.argv[1])\n"
    )
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "w.pt")], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "QuickGELU", proc.stdout  # open_clip's own QuickGELU, in every block of both towers
    assert torch.equal(torch.load(tmp_path / "w.pt"), probe)  # the file's weights were loaded


def test_an_unreachable_hub_fails_at_once(tmp_path):
    """Offline, a pretrained tag that is not cached is an error without huggingface_hub's retries
    (5 per file, about 70 s for an open_clip tag) and without open_clip's own log line. The endpoint
    is a closed local port, so the test never downloads, online or not."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": "http://127.0.0.1:9", "OMP_NUM_THREADS": "1"}
    env.pop("HF_HUB_OFFLINE", None)
    code = (
        "from mugstan.backbones.build import build_clip\n"
        "from mugstan.config import ConfigError\n"
        "try:\n    build_clip('ViT-B-32', pretrained='openai')\n"
        "except ConfigError as err:\n    print(err)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert "Retrying" not in done.stderr and "ERROR" not in done.stderr, done.stderr
    assert (
        "could not fetch open_clip weights 'ViT-B-32' / 'openai' (the Hugging Face Hub cannot be reached" in done.stdout
    )
    assert "model.weights=/path/to/ViT-B-32.pt" in done.stdout
