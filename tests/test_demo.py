"""``mugstan demo --quick`` end to end, and ``mugstan bench synthetic``'s table: the bench's seed 0
repeats the demo's runs (the same seed gives the same numbers and files), then adds a seed."""

import json
import os

import pytest
import torch

from mugstan import bench, demo
from mugstan.cli import main as cli


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    """The README's command as a new user runs it: from an empty folder, the default (relative) --out."""
    empty, before = tmp_path_factory.mktemp("demo"), os.getcwd()
    os.chdir(empty)
    try:
        assert cli(["demo", "--quick", "--no-progress"]) == 0
    finally:
        os.chdir(before)
    out = empty / "mugstan_demo"
    saved = (out / "configs" / "stan.yaml").read_text()
    assert (
        f"root: {out}/data_v64_f4_s32_seed0\n" in saved and f"output_dir: {out}/stan\n" in saved
    )  # one root, absolute
    return out, json.loads((out / "results.json").read_text())


def test_quick_demo_writes_every_output(quick_demo, capsys):
    out, results = quick_demo
    assert [r["model"] for r in results["rows"]] == [demo.LABELS[m] for m in demo.DEMO_MODELS]
    # the table shows the numbers of each stage's evaluation
    for name, row in zip(demo.DEMO_MODELS, results["rows"], strict=True):
        details = results["models"][name]
        assert (
            row["t2v R@1"] == details["test"]["retrieval"]["t2v"]["R@1"]
            and row["v2t R@1"] == details["test"]["retrieval"]["v2t"]["R@1"]
        )
        assert row["pair accuracy"] == details["pair_accuracy"]
        assert row["zero-shot motion top-1"] == details["zero_shot_recognition"]["top1"]
    # fine-tuned from the packaged CLIP, pretrained on seed 0's stills
    assert results["dataset"]["counts"]["test"] == 60 and results["pretraining"]["packaged"] == str(demo.PACKAGED_CLIP)
    assert results["pretraining"]["seed"] == "0" and results["pretraining"]["dtype"] == "float16"
    assert "| meanP (CLIP4Clip) |" in (out / "results.md").read_text()
    # pair accuracy per motion pair: every pair on the test set; meanP's twins tie, so exactly 50 each
    by_pair = {name: results["models"][name]["pair_accuracy_by_motion"] for name in demo.DEMO_MODELS}
    assert list(by_pair["stan"]) == ["left/right", "up/down", "grow/shrink", "fade_in/fade_out", "rotate_cw/rotate_ccw"]
    assert set(by_pair["meanP"].values()) == {50.0}
    assert sum(by_pair["stan"].values()) / 5 == pytest.approx(results["rows"][1]["pair accuracy"])  # 12 captions each
    assert "| STAN-self | " in (out / "results.md").read_text().split("pair accuracy by motion pair")[1]
    for name in ["results.png", *[q["image"] for q in results["examples"]["queries"]]]:
        assert (out / name).stat().st_size > 5000, name
    for stage in ("meanP", "stan"):  # every stage went through the engine
        assert (out / stage / "checkpoints" / "best" / "model.safetensors").is_file()
        assert (out / stage / "metrics.jsonl").is_file()
    assert not (out / "pretrain_clip").exists()


def test_export_clip_pretrains_and_writes_a_packaged_style_file(tmp_path):
    """``--export-clip`` runs the pretraining stage through the engine and writes an fp16
    open_clip-layout file that the fine-tuning stages load like the packaged one."""
    from safetensors.torch import load_file

    from mugstan.config import ModelConfig
    from mugstan.models import build_model

    dest = tmp_path / "clip.safetensors"
    assert (
        cli(
            [
                "demo",
                "--quick",
                "--export-clip",
                str(dest),
                "--out",
                str(tmp_path / "run"),
                "--no-progress",
                "--seed",
                "3",
            ]
        )
        == 0
    )
    # 64 training videos x 4 stills in batches of 64: 4 pretraining steps
    assert json.loads((tmp_path / "run" / "pretrain_clip" / "results.json").read_text())["steps"] == 4
    info = demo.clip_metadata(dest)
    assert info["format"] == "open_clip" and info["seed"] == "3" and info["dtype"] == "float16"
    assert json.loads(info["config"])["text_cfg"]["heads"] == 2  # it records its architecture (mugstan-tiny)
    tensors, packaged = load_file(str(dest)), load_file(str(demo.PACKAGED_CLIP))
    assert tensors.keys() == packaged.keys() and all(t.dtype == torch.float16 for t in tensors.values())
    full = load_file(str(tmp_path / "run" / "pretrain_clip" / "clip.safetensors"))  # the fp32 one --pretrain uses
    assert full.keys() == tensors.keys() and all(torch.equal(tensors[k], full[k].half()) for k in full)  # rounded
    model = build_model(ModelConfig(backbone="mugstan-tiny", weights=str(dest)))
    torch.testing.assert_close(model.backbone.clip.visual.proj.detach(), tensors["visual.proj"].float())


def test_demo_refuses_export_with_pretrain(tmp_path, capsys):
    assert cli(["demo", "--export-clip", str(tmp_path / "c.safetensors"), "--pretrain"]) == 2
    assert "--export-clip pretrains anyway" in capsys.readouterr().err


@pytest.fixture(scope="module")
def bench_seed0(tmp_path_factory):
    """``mugstan bench synthetic --quick`` on seed 0 with the demo's models: the demo's runs again."""
    out = tmp_path_factory.mktemp("bench")
    assert (
        cli(
            [
                "bench",
                "synthetic",
                "--quick",
                "--models",
                *demo.DEMO_MODELS,
                "--seeds",
                "0",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    summary = json.loads((out / "summary.json").read_text())
    assert [r["model"] for r in summary["rows"]] == [demo.LABELS[m] for m in demo.DEMO_MODELS] and all(
        r["seeds"] == 1 for r in summary["rows"]
    )
    assert "| STAN-self |" in (out / "summary.md").read_text().split("pair accuracy by motion pair")[1]
    return out


def test_same_seed_same_table(quick_demo, bench_seed0):
    """The same seed gives the same data files and the same numbers (training time aside): the
    bench's seed 0 and the demo rendered and trained separately."""
    out, first = quick_demo
    runs = [json.loads(line) for line in (bench_seed0 / "runs.jsonl").read_text().splitlines()]
    again = [
        {k: r[k] for k in row if k != "train seconds"}
        for r, row in zip([r for r in runs if r["seed"] == 0], first["rows"], strict=True)
    ]
    assert again == [{k: v for k, v in row.items() if k != "train seconds"} for row in first["rows"]]
    seed0 = bench_seed0 / "seed0"
    def data(root):
        return sorted(p.relative_to(root).as_posix() for p in root.glob("data_*/**/*") if p.is_file())
    assert data(seed0) == data(out)
    for name in data(out):
        assert (seed0 / name).read_bytes() == (out / name).read_bytes(), name


def test_bench_aggregates_mean_and_spread():
    runs = [
        {"seed": s, "name": "meanP", **{k: v for k in (*demo.METRICS, "train seconds")}}
        for s, v in ((0, 40.0), (1, 50.0), (2, 60.0))
    ]
    (row,) = bench.aggregate(runs, ["meanP"])
    assert row["seeds"] == 3 and row["t2v R@1"] == pytest.approx(50.0) and row["t2v R@1 std"] == pytest.approx(10.0)
    assert "50.0 ± 10.0" in demo.markdown_table([row])


def test_bench_synthetic_runs_two_seeds_and_resumes(bench_seed0, capsys):
    """``mugstan bench synthetic --quick``: one line per (seed, model), the summary table over the
    seeds, and a second call with the same seeds runs nothing again (seed 0 is the fixture's run)."""
    out = bench_seed0
    args = [
        "bench",
        "synthetic",
        "--quick",
        "--models",
        "meanP",
        "--seeds",
        "0",
        "1",
        "--out",
        str(out),
        "--no-progress",
    ]
    capsys.readouterr()
    assert cli(args) == 0
    assert "seed 0: every model already in" in capsys.readouterr().out  # only seed 1 was trained
    runs = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    assert [(r["seed"], r["name"]) for r in runs] == [(0, "meanP"), (0, "stan"), (1, "meanP")]
    summary = json.loads((out / "summary.json").read_text())
    assert [r["model"] for r in summary["rows"]] == ["meanP (CLIP4Clip)"] and summary["rows"][0]["seeds"] == 2
    mean = lambda key: (runs[0][key] + runs[2][key]) / 2  # noqa: E731
    assert summary["rows"][0]["t2v R@1"] == pytest.approx(mean("t2v R@1")) and summary["rows"][0][
        "pair accuracy"
    ] == pytest.approx(mean("pair accuracy"))
    assert "| meanP (CLIP4Clip) |" in (out / "summary.md").read_text() and (out / "summary.png").stat().st_size > 5000
    meanp = summary["pair_accuracy_by_motion"][0]  # the twins tie under meanP on every seed
    assert meanp["seeds"] == 2 and [meanp[k] for k in runs[0]["pair accuracy by motion"]] == [50.0] * 5
    assert cli(args) == 0
    assert "seed 1: every model already in" in capsys.readouterr().out
    assert len((out / "runs.jsonl").read_text().splitlines()) == 3


def test_export_clip_to_a_folder_is_one_line(tmp_path, capsys):
    assert cli(["demo", "--export-clip", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "is a folder; name the file to write" in err and "Traceback" not in err
