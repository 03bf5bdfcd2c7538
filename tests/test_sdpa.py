"""Training takes the fused attention path: every attention of a training step (open_clip's
vision and text blocks through nn.MultiheadAttention, STAN's spatial copies of them, STAN's
temporal attention, the seqTransf blocks) is one ``scaled_dot_product_attention`` call, with no
softmax of explicit attention weights anywhere. nn.MultiheadAttention's own fast path is for
inference; in training its ``need_weights=False`` call goes through SDPA, which this checks."""

from __future__ import annotations

import pytest
import torch
from torch.profiler import profile

from mugstan.config import ModelConfig, STANConfig
from mugstan.models import build_model


@pytest.mark.parametrize("head,expected", [("mean", 4 + 2 + 2 + 2), ("seqTransf", 4 + 2 + 1)])
def test_every_training_attention_is_sdpa(head, expected):
    torch.manual_seed(0)
    branch = "stan" if head == "mean" else "none"
    model = build_model(
        ModelConfig(backbone="mugstan-tiny", branch=branch, head=head, seq_layers=1, stan=STANConfig(depth=2))
    )
    model.train()
    ids, mask = model.tokenize(["a cat", "a dog"])
    with profile() as prof:  # mugstan-tiny: 4 vision blocks, 2 text blocks; STAN depth 2: 2 spatial + 2 temporal
        out = model(torch.randn(2, 3, 3, 32, 32), torch.ones(2, 3, dtype=torch.bool), ids, mask)
        (out["video"].x.sum() + out["text"].x.sum()).backward()
    names = [e.name for e in prof.events()]
    assert names.count("aten::scaled_dot_product_attention") == expected
    assert "aten::softmax" not in names and "aten::_softmax" not in names
