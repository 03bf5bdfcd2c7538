"""The README's real-data commands, verbatim, on a fake MSR-VTT laid out as distributed under a
custom root, run in a scratch folder (the configs are named, packaged ones). Three substitutions
only: `/data/msrvtt` -> the fake dataset's folder, `mugstan` / `torchrun` -> this interpreter's
`-m mugstan.cli` / `-m torch.distributed.run` (the same programs, from this checkout; torchrun on a
free port), and torchrun's 8 processes -> 2 (still several processes, one per core of the 2-core
test machine: 8 took 42 s of the test's 66, 2 take about a third of that).
Nothing can be downloaded, so training and evaluation get a tiny random backbone and tiny sizes as
extra overrides appended to the line."""

import json
import os
import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import torch
from data_fixtures import write_video

REPO = Path(__file__).parent.parent
TINY = [
    "model.backbone=mugstan-tiny",
    "model.pretrained=null",
    "data.num_frames=2",
    "data.test_num_frames=2",
    "data.image_size=32",
    "data.resize_short=null",
    "data.test_resize_short=null",
    "data.num_workers=0",
    "train.batch_size=8",
    "train.max_steps=1",
    "train.precision=fp32",
    "eval.batch_size=8",
]


def readme_commands() -> list[str]:
    """The command lines of the first ```bash block under '## Use it on real data', comments removed."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Use it on real data") :]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]


def fake_msrvtt(root: Path, videos: int = 8) -> Path:
    """MSRVTT_data.json, the 9k train CSV, the JSFUSION test CSV and real H.264 files in videos/."""
    ids = [f"video{i}" for i in range(videos)]
    for i, v in enumerate(ids):
        write_video(root / "videos" / f"{v}.mp4", frames=12, size=(64, 48), fps=4, seed=i)
    sentences = [
        {"video_id": v, "caption": f"clip number {i} take {j}", "sen_id": 2 * i + j}
        for i, v in enumerate(ids)
        for j in range(2)
    ]
    (root / "MSRVTT_data.json").write_text(
        json.dumps({"videos": [{"video_id": v} for v in ids], "sentences": sentences})
    )
    (root / "MSRVTT_train.9k.csv").write_text("video_id\n" + "".join(f"{v}\n" for v in ids))
    (root / "MSRVTT_JSFUSION_test.csv").write_text(
        "key,vid_key,video_id,sentence\n" + "".join(f"ret{i},msr{i},{v},clip number {i}\n" for i, v in enumerate(ids))
    )
    return root


def tiny_openai_pt(path: Path) -> Path:
    """A small checkpoint in OpenAI's key layout (what `ViT-B-32.pt` holds), for the convert line."""
    from test_convert import openai_state_dict

    torch.save(openai_state_dict()[1], path)
    return path


def free_port() -> int:
    """A TCP port nothing listens on now: torchrun's default 29500 is shared by every suite on the machine."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def as_argv(line: str, root: Path) -> list[str]:
    argv = shlex.split(line.replace("/data/msrvtt", str(root)).replace("--nproc_per_node 8", "--nproc_per_node 2"))
    program = {
        "mugstan": [sys.executable, "-m", "mugstan.cli"],
        "torchrun": [sys.executable, "-m", "torch.distributed.run", "--master_port", str(free_port())],
    }[argv[0]]
    extra = TINY if ("train" in argv or "eval" in argv) else []
    return program + argv[1:] + extra


def test_readme_lists_the_commands_this_test_runs():
    kinds = [" ".join(shlex.split(line)[:2]) for line in readme_commands()]
    assert kinds == ["mugstan data", "mugstan train", "torchrun --nproc_per_node", "mugstan eval", "mugstan convert"]
    assert all("/data/msrvtt" in line for line in readme_commands() if "convert" not in line)
    assert all(
        "msrvtt/stan_vitb32 " in line and "configs/" not in line for line in readme_commands() if "convert" not in line
    )


def test_readme_real_data_commands_on_a_custom_root(tmp_path):
    root = fake_msrvtt(tmp_path / "custom_root" / "msrvtt")
    work = tmp_path / "work"  # the user's folder: runs/ and the converted file land here
    work.mkdir()
    tiny_openai_pt(work / "ViT-B-32.pt")
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
    }
    outputs = []
    for line in readme_commands():
        argv = as_argv(line, root)
        done = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{line}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
        outputs.append(done.stdout)

    check, *_, evaluation, _ = outputs
    assert "train: 8 videos, 0 with problems" in check and "test: 8 videos, 0 with problems" in check
    results = json.loads((work / "runs" / "msrvtt_stan_vitb32" / "results.json").read_text())
    assert results["test"]["counts"]["videos"] == 8 and results["steps"] == 1
    # the evaluation of the best checkpoint prints the test numbers the (last) training run reported
    from mugstan.engine.evaluate import format_result

    reported = [line for line in format_result(results["test"]).splitlines() if "R@1" in line]
    assert len(reported) == 2 and all(line in evaluation.splitlines() for line in reported), evaluation
    # the converted file holds the OpenAI checkpoint's tensors as they were (its three metadata scalars aside)
    from safetensors.torch import load_file

    source, converted = torch.load(work / "ViT-B-32.pt"), load_file(str(work / "clip-b32.safetensors"))
    assert set(source) - set(converted) == {"input_resolution", "context_length", "vocab_size"}
    assert all(torch.equal(converted[k], source[k]) for k in converted)
