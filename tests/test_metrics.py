"""Metrics against hand-computed examples, including ties and multi-caption sets."""

import pytest
import torch

from mugstan.metrics import dual_softmax, recognition_metrics, retrieval_metrics, summarize


def test_one_to_one_by_hand():
    s = torch.tensor([[0.9, 0.1, 0.3],   # text 0: truth 0.9 best      -> rank 0
                      [0.8, 0.5, 0.2],   # text 1: 0.8 beats 0.5       -> rank 1
                      [0.7, 0.6, 0.1]])  # text 2: truth lowest        -> rank 2
    m = retrieval_metrics(s, [0, 1, 2])
    assert m["t2v"]["R@1"] == pytest.approx(100 / 3) and m["t2v"]["MdR"] == 2 and m["t2v"]["MnR"] == 2
    # video->text on the transpose: video 0: 0.9 vs 0.8, 0.7 -> 0; video 1: 0.5 vs 0.1, 0.6 -> 1;
    # video 2: 0.1 vs 0.3, 0.2 -> 2
    assert m["v2t"]["R@1"] == pytest.approx(100 / 3) and m["v2t"]["R@5"] == 100


def test_ties_count_against_the_model():
    m = retrieval_metrics(torch.ones(4, 4), [0, 1, 2, 3])
    assert m["t2v"]["R@1"] == 0 and m["t2v"]["MdR"] == 4  # constant scores rank every truth last
    tie = torch.tensor([[0.5, 0.5], [0.0, 1.0]])
    assert retrieval_metrics(tie, [0, 1])["t2v"]["R@1"] == 50


def test_summarize_even_median():
    r = summarize(torch.tensor([0, 1, 4, 9]))
    assert r["MdR"] == 3.5 and r["MnR"] == 4.5 and r["R@1"] == 25 and r["R@5"] == 75 and r["R@10"] == 100


def test_multi_caption_conventions():
    # 2 videos, captions 0,1,2 of video 0 and caption 3 of video 1
    s = torch.tensor(
        [
            [0.2, 0.9],  # c0 (video 0) prefers video 1 -> t2v rank 1
            [0.8, 0.1],  # c1 (video 0)                  -> 0
            [0.3, 0.4],  # c2 (video 0)                  -> 1
            [0.7, 0.6],
        ]
    )  # c3 (video 1)                  -> 1
    m = retrieval_metrics(s, [0, 0, 0, 1])
    assert m["t2v"]["R@1"] == 25 and m["t2v"]["MnR"] == 1.75
    # lenient v2t: video 0 groups {0.8 own, 0.7 other} -> 0; video 1 groups {own 0.6, other max 0.9} -> 1
    assert m["v2t_lenient"]["R@1"] == 50
    # strict: video 1's best own caption (0.6) among the others (0.9, 0.1, 0.4) -> rank 1
    assert m["v2t_strict"]["MnR"] == 1.5
    s2 = s.clone()
    s2[3, 1] = 0.95  # now caption 3 outranks everything for video 1
    assert retrieval_metrics(s2, [0, 0, 0, 1])["v2t_strict"]["R@1"] == 100


def test_dsl_is_labelled_and_reranks():
    s = torch.tensor([[10.0, 2.0], [9.0, 8.0]])  # video 0 is a hub: text 1 also prefers it
    plain = retrieval_metrics(s, [0, 1])
    dsl = retrieval_metrics(s, [0, 1], dsl=True)
    assert set(dsl) == {"t2v_dsl", "v2t_dsl"}
    assert plain["t2v"]["R@1"] == 50 and dsl["t2v_dsl"]["R@1"] == 100
    assert dual_softmax(s).shape == s.shape


def test_recognition_multi_view():
    logits = torch.tensor(
        [
            [[2.0, 0.0, 0.0], [0.0, 3.0, 0.0]],  # views disagree; average favours class 1
            [[0.0, 0.0, 5.0], [0.0, 0.0, 5.0]],
        ]
    )
    m = recognition_metrics(logits, torch.tensor([1, 0]))
    assert m["top1"] == 50 and m["top5"] == 100
    assert recognition_metrics(torch.zeros(2, 6), torch.tensor([0, 1]))["top5"] == 0  # all tied: pessimistic
