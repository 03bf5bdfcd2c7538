"""What the commands tell the user happened: where training saved what and why it was kept, quiet
evaluation, the defaults in --help, a curves.png that shows a short run."""

import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
from data_fixtures import write_config, write_two_clips

from mugstan import cli


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_two_clips(tmp_path_factory.mktemp("data"))


def blue_pixels(png: Path, left_half: bool = True) -> int:
    """Pixels of matplotlib's tab:blue (#1f77b4), where the training loss is drawn."""
    import matplotlib.image

    image = matplotlib.image.imread(png)[..., :3]
    if left_half:
        image = image[:, : image.shape[1] // 2]
    return int((np.abs(image - np.array([0x1F, 0x77, 0xB4]) / 255).max(-1) < 0.08).sum())


def test_train_says_where_it_saved_and_whether_best_means_best(data, tmp_path, capsys):
    config = write_config(tmp_path / "cfg.yaml", data, tmp_path / "run", batch_size=2)
    assert cli.main(["train", str(config), "--no-progress"]) == 0
    out = capsys.readouterr().out
    run = tmp_path / "run"
    assert (
        f"saved {run / 'checkpoints' / 'best'}: the last epoch's model (no validation split, data.val_ann is null)"
        in out
    )
    assert f"{run / 'checkpoints' / 'last'} resumes the run (--resume)" in out and str(run / "results.json") in out
    assert "the best" not in out
    # a one-step run still draws its loss: a marker, not a line through a single point
    assert json.loads((run / "results.json").read_text())["steps"] == 1 and blue_pixels(run / "curves.png") > 10

    config = write_config(tmp_path / "val.yaml", data, tmp_path / "val", batch_size=2)
    val = data / "val.jsonl"  # the same clips as another file: a file that is data.test_ann would choose nothing
    val.write_text((data / "train.jsonl").read_text())
    assert (
        cli.main(
            ["train", str(config), f"data.val_ann={val}", f"data.test_ann={data / 'train.jsonl'}", "--no-progress"]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert f"saved {tmp_path / 'val' / 'checkpoints' / 'best'}: the best " in out and "on the val split (" in out
    assert "best checkpoint on the test split" in out


def test_the_command_shows_what_the_library_logs(capsys):
    """Library code logs (``mugstan.*`` loggers); while ``mugstan`` runs a command it shows each
    record's bare message once, INFO on stdout and WARNING on stderr, even when a library's
    ``logging.warning`` has given the root logger a handler (open_clip's does); afterwards the
    logger is as it was."""
    log = logging.getLogger("mugstan")
    before = (list(log.handlers), log.level, log.propagate)
    root = logging.getLogger()
    stray = logging.StreamHandler(sys.stderr)  # what logging.warning's basicConfig installs
    root.addHandler(stray)
    try:
        with cli.console_logging(), cli.console_logging():
            assert sum(isinstance(h, cli.ConsoleHandler) for h in log.handlers) == 1
            capsys.readouterr()
            logging.getLogger("mugstan.engine.train").info("training x: 2 items")
            logging.getLogger("mugstan.data.datasets.shards").warning("data.val_shards: skipped a: no video")
            assert capsys.readouterr() == ("training x: 2 items\n", "data.val_shards: skipped a: no video\n")
    finally:
        root.removeHandler(stray)
    assert (list(log.handlers), log.level, log.propagate) == before


def test_eval_without_progress_bars(data, tmp_path, capsys):
    config = write_config(tmp_path / "cfg.yaml", data, tmp_path / "run", batch_size=2)
    assert cli.main(["eval", str(config), f"data.test_ann={data / 'train.jsonl'}", "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "t2v" in captured.out and "embedding" not in captured.err and "%|" not in captured.err


def test_caption_help_shows_its_defaults(capsys):
    with pytest.raises(SystemExit):
        cli.main(["caption", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for default in (
        "(default 6)",
        "(default 30)",
        "(default 5)",
        "(default 0)",
        "(default here: cpu" if not _cuda() else "(default here: cuda",
    ):
        assert default in text, default


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()
