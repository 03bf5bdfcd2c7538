"""The demo's pictures: every text element inside the figure, with the longest query and model
name the benchmark can produce; frames drawn pixel for pixel; the right videos marked."""

import itertools

import matplotlib
import numpy as np
import pytest
from data_fixtures import write_video
from matplotlib.container import ErrorbarContainer
from matplotlib.text import Text

from mugstan import demo
from mugstan.data.synthetic import COLORS, MOTION_PHRASES, SHAPES, TEST_TEMPLATES, TRAIN_TEMPLATES, caption

matplotlib.use("Agg")


def longest_query() -> str:
    every = (
        caption(c, s, m, t, p)
        for c, s, m, t in itertools.product(COLORS, SHAPES, MOTION_PHRASES, (*TRAIN_TEMPLATES, *TEST_TEMPLATES))
        for p in range(len(MOTION_PHRASES[m]))
    )
    return max(every, key=len)


def texts_outside(fig) -> list[str]:
    """The visible, non-empty texts whose drawn extent leaves the figure."""
    renderer = fig.canvas.get_renderer()
    fig.draw(renderer)
    box = fig.bbox
    outside = []
    for text in fig.findobj(Text):
        if not text.get_visible() or not text.get_text().strip():
            continue
        extent = text.get_window_extent(renderer)
        if extent.x0 < box.x0 - 0.5 or extent.y0 < box.y0 - 0.5 or extent.x1 > box.x1 + 0.5 or extent.y1 > box.y1 + 0.5:
            outside.append(f"{text.get_text()!r} at {extent.bounds}")
    return outside


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("sheet")
    return [str(write_video(root / f"{i}.mp4", frames=8, size=(32, 32), seed=i)) for i in range(5)]


def test_contact_sheet_keeps_every_text_inside(videos):
    query = longest_query()
    assert len(query) >= 55, query  # e.g. "in this clip the yellow triangle rotates counterclockwise"
    model = max(demo.LABELS.values(), key=len)
    fig = demo.contact_sheet_figure(
        videos, query, truth=1, twin=0, ranked=[0, 1, 2, 3], scores=[12.3, 12.1, 9.0, 8.5], model=model
    )
    assert texts_outside(fig) == []
    shown = " ".join(t.get_text() for t in fig.findobj(Text)).replace("\n", " ")
    assert f'"{query}"' in " ".join(shown.split())  # wrapped, never cut
    # the twin (rank 1) and the query's own video (rank 2) are named at their rows, with a legend
    tags = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert tags == ["its reversed twin", "the query's video"]
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["the query's own video", "the same clip played backwards"]
    # frames left to right in time, pixel for pixel: one image per frame, nearest-neighbour
    images = [ax.images[0] for ax in fig.axes]
    assert len(images) == 4 * demo.FRAMES and {im.get_interpolation() for im in images} == {"nearest"}
    assert [ax.get_title() for ax in fig.axes[: demo.FRAMES]] == [f"t = {t}" for t in range(1, demo.FRAMES + 1)]
    own = fig.axes[demo.FRAMES]  # rank 2's first frame: green, the twin's orange, others grey
    assert matplotlib.colors.to_hex(own.spines["top"].get_edgecolor()) == matplotlib.colors.to_hex(demo.OWN_COLOUR)
    assert matplotlib.colors.to_hex(fig.axes[0].spines["top"].get_edgecolor()) == matplotlib.colors.to_hex(
        demo.TWIN_COLOUR
    )
    matplotlib.pyplot.close(fig)


def test_contact_sheet_frames_are_the_decoded_pixels(videos):
    from mugstan.data.video import read_clip

    fig = demo.contact_sheet_figure(
        videos, "a red circle moves left", truth=2, twin=3, ranked=[2], scores=[1.0], model="STAN-self"
    )
    clip = read_clip(videos[2], demo.FRAMES).permute(0, 2, 3, 1).numpy()
    for t, ax in enumerate(fig.axes):
        np.testing.assert_array_equal(np.asarray(ax.images[0].get_array()), clip[t])
    matplotlib.pyplot.close(fig)


def test_bar_chart_explains_whiskers_and_chance(tmp_path):
    rows = [
        {"model": label, "t2v R@1": 50.0, "pair accuracy": 70.0, "zero-shot motion top-1": 30.0}
        for label in demo.LABELS.values()
    ]
    chance = {"t2v R@1": 100 / 60, "pair accuracy": 50.0, "zero-shot motion top-1": 10.0}
    one = demo.bar_chart_figure(rows, "synthetic temporal benchmark (seed 0)", chance)
    assert texts_outside(one) == []
    ax = one.axes[0]
    assert not [c for c in ax.containers if isinstance(c, ErrorbarContainer)]  # one seed: no whiskers, none explained
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == [
        "text-to-video R@1; chance 1.7",
        "pair accuracy (own clip vs reversed); chance 50.0",
        "zero-shot motion top-1; chance 10.0",
    ]
    # a dashed chance line across every bar of its metric, at its level
    lines = [c for c in ax.collections if c.get_linestyle() and c.get_linestyle()[0][1] is not None]
    assert sorted(round(seg[0][1], 3) for c in lines for seg in c.get_segments()) == sorted(
        [round(v, 3) for v in chance.values() for _ in rows]
    )
    assert "whiskers" not in " ".join(t.get_text() for t in one.findobj(Text))
    matplotlib.pyplot.close(one)

    seeds = [{**r, **{f"{k} std": 2.0 for k in chance}, "seeds": 3} for r in rows]
    many = demo.bar_chart_figure(seeds, "synthetic temporal benchmark, 3 seed(s)", chance)
    assert texts_outside(many) == []
    assert len([c for c in many.axes[0].containers if isinstance(c, ErrorbarContainer)]) == 3
    assert "whiskers: ± one standard deviation over 3 seeds" in " ".join(t.get_text() for t in many.findobj(Text))
    matplotlib.pyplot.close(many)
