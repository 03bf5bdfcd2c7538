"""Search: index videos with a trained model, search them (exact and faiss, CLI), serve them safely,
and use the page in headless Chromium.

The model is a tiny CLIP (``mugstan-tiny``, random init, meanP) trained for 60 steps on the
synthetic benchmark's *train* split; the index holds the *test* videos (60: every colour with
every motion), which it never saw, searched with their test captions (half of them from a
template unseen in training).
"""

import http.client
import json
import os
import shutil
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from data_fixtures import write_audio_only

from mugstan.cli import main as cli
from mugstan.config import load_config
from mugstan.data.synthetic import COLORS, SynthParams, generate, render_clip, write_video
from mugstan.engine.train import train
from mugstan.search.index import build_index, find_videos, windows
from mugstan.search.query import FAISS_FROM, Searcher, choose_backend, faiss_index, faiss_ivf_index, top_k_exact


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny meanP model trained on the synthetic train split, and the test split it never saw."""
    root = tmp_path_factory.mktemp("search")
    data = root / "data"
    generate(data, SynthParams(videos=160, frames=8, size=32), progress=False)
    # src/mugstan/configs/synthetic/meanP.yaml, scaled down: a random-init tiny CLIP, fp32 (bf16 autocast is
    # 10-100x slower on CPUs without native bf16), 6 epochs x 15 steps of 32 captions; two loader
    # workers, as decoding takes most of a step (half the time of num_workers=0, same weights).
    cfg = {
        "name": "search_test",
        "model": {
            "backbone": "mugstan-tiny",
            "pretrained": None,
            "branch": "none",
            "head": "meanP",
            "context_length": 16,
        },
        "data": {
            "dataset": "jsonl",
            "root": str(data),
            "train_ann": str(data / "train.jsonl"),
            "num_frames": 4,
            "image_size": 32,
            "crop_scale": [1.0, 1.0],
            "num_workers": 2,
        },
        "train": {
            "output_dir": str(root / "run"),
            "seed": 0,
            "epochs": 6,
            "batch_size": 32,
            "lr": 1e-3,
            "new_module_lr_mult": 1.0,
            "weight_decay": 0.1,
            "warmup": 0.1,
            "grad_clip": 5.0,
            "precision": "fp32",
            "log_every": 1000,
        },
    }
    (root / "train.yaml").write_text(yaml.safe_dump(cfg))
    train(load_config(root / "train.yaml"), progress=False)
    test = [json.loads(line) for line in (data / "test.jsonl").read_text().splitlines()]
    return SimpleNamespace(
        root=root,
        checkpoint=root / "run" / "checkpoints" / "best",
        videos=data / "videos" / "test",
        paths=[Path(r["video"]).name for r in test],
        captions=[r["caption"] for r in test],
    )


@pytest.fixture(scope="module")
def test_index(trained):
    """The 60 test videos indexed through the CLI."""
    out = trained.root / "test_index"
    assert (
        cli(["index", str(trained.videos), "--checkpoint", str(trained.checkpoint), "--out", str(out), "--no-progress"])
        == 0
    )
    return out


@pytest.fixture(scope="module")
def long_video(tmp_path_factory) -> Path:
    """A 20 s, 32x32, 8 fps video: a red square moving left for 10 s, then a blue one."""
    params = SynthParams(frames=80, size=32)
    frames = np.concatenate(
        [
            render_clip(color, "square", ("left", "right"), params, np.random.default_rng(i))[0]
            for i, color in enumerate(["red", "blue"])
        ]
    )
    path = tmp_path_factory.mktemp("long") / "long.mp4"
    write_video(path, frames)
    return path


def copy_videos(trained, dest: Path, indices, name="{:05d}.mp4") -> list[str]:
    dest.mkdir(parents=True, exist_ok=True)
    names = []
    for i in indices:
        shutil.copy2(trained.videos / trained.paths[i], dest / name.format(i))
        names.append(name.format(i))
    return names


@contextmanager
def live_server(app):
    """``app`` served by uvicorn on a free localhost port, in a thread; yields the port."""
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started:
        assert time.time() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def raw_get(port: int, raw_path: str) -> tuple[int, bytes]:
    """GET with the path sent byte for byte (HTTP clients remove ``../`` before sending)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", raw_path)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


# ------------------------------------------------------------------------------------ indexing


def test_windows():
    assert windows(3.0, 8, 4) == [(0.0, 3.0)]
    assert windows(8.0, 8, 4) == [(0.0, 8.0)]
    assert windows(20.0, 8, 4) == [(0.0, 8.0), (4.0, 12.0), (8.0, 16.0), (12.0, 20.0)]
    assert windows(10.0, 8, 4) == [(0.0, 8.0), (2.0, 10.0)]  # the last window ends at the end
    assert windows(8.0000001, 8, 4) == [(0.0, 8.0)]  # no near-duplicate window for rounding noise
    assert windows(21.0, 8, 8) == [(0.0, 8.0), (8.0, 16.0), (13.0, 21.0)]
    with pytest.raises(ValueError, match="stride <= window"):
        windows(20.0, 8, 10)
    with pytest.raises(ValueError, match="window > 0"):
        windows(20.0, 0, 0)


def test_search_finds_the_right_test_video(trained, test_index):
    index = json.loads((test_index / "index.json").read_text())
    assert index["shape"] == [60, 64] and index["similarity"] == "dot" and len(index["files"]) == 60
    searcher = Searcher(test_index)
    assert searcher.backend == "exact"
    k = 10
    found, same_color = [], []
    for path, caption in zip(trained.paths, trained.captions, strict=True):
        results = searcher.search(caption, k)
        assert [r["rank"] for r in results] == list(range(1, k + 1))
        assert all(a["score"] >= b["score"] for a, b in zip(results, results[1:], strict=False))
        found.append(any(r["path"] == path for r in results))
        color = next(c for c in COLORS if c in caption)
        same_color.extend(color in trained.captions[trained.paths.index(r["path"])] for r in results[:5])
    recall, color_precision = np.mean(found), np.mean(same_color)
    print(
        f"right video in the top {k}: {recall:.1%} of {len(found)} test captions; "
        f"top-5 results of the caption's colour: {color_precision:.1%}"
    )
    # Chance: the right video in the top 10 of 60 for 10 / 60 = 17% of the captions; a result of
    # the caption's colour 9 / 59 = 15% of the time (10 videos per colour, one per motion). This
    # model learns colour in its 90 steps (shape and motion take far longer): measured 78.3% (47 of
    # 60) and 88.0% on 2 CPU cores with the benchmark's format 5 (its clock-hand rotations: 4
    # epochs gave 73.3%, and blue too weak for the long-video test; format 4 gave 81.7% and 93.7%
    # in 4); the bounds leave a caption or two for another CPU's arithmetic.
    assert recall >= 0.75, recall
    assert color_precision >= 0.85, color_precision


def test_incremental_update_and_report(trained, tmp_path):
    work, out = tmp_path / "videos", tmp_path / "index"
    copy_videos(trained, work, range(4))
    copy_videos(trained, work / "sub" / "deeper", [4, 5])
    (work / "broken.mp4").write_bytes(b"not a video")
    (work / "empty.mkv").write_bytes(b"")
    write_audio_only(work / "sub" / "audio.mp4")
    (work / "notes.txt").write_text("not a video container: ignored")
    counts = build_index(work, trained.checkpoint, out, progress=False)
    assert counts == {"added": 6, "kept": 0, "removed": 0, "failed": 3, "noted": 0, "rows": 6}
    report = {r["path"]: r["reason"] for r in json.loads((out / "report.json").read_text())}
    assert set(report) == {"broken.mp4", "empty.mkv", "sub/audio.mp4"}
    assert (
        "cannot be opened" in report["broken.mp4"]
        and "empty" in report["empty.mkv"]
        and "no video stream" in report["sub/audio.mp4"]
    )

    # readable without mugstan: numpy + json
    emb, items, meta = (
        np.load(out / "embeddings.npy"),
        json.loads((out / "items.json").read_text()),
        json.loads((out / "index.json").read_text()),
    )
    assert emb.shape == (6, 64) and emb.dtype == np.float32 and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    assert {it["path"] for it in items} == {
        "00000.mp4",
        "00001.mp4",
        "00002.mp4",
        "00003.mp4",
        "sub/deeper/00004.mp4",
        "sub/deeper/00005.mp4",
    }
    assert all(items[row]["path"] == path for path, f in meta["files"].items() for row in f["rows"])
    before = {it["path"]: emb[i] for i, it in enumerate(items)}

    os.remove(work / "00000.mp4")  # removed: leaves the index
    st = (work / "00001.mp4").stat()
    os.utime(work / "00001.mp4", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched: embedded again
    copy_videos(trained, work, [6])  # new
    counts = build_index(work, trained.checkpoint, out, progress=False)
    assert counts == {"added": 2, "kept": 4, "removed": 1, "failed": 3, "noted": 0, "rows": 6}
    emb, items = np.load(out / "embeddings.npy"), json.loads((out / "items.json").read_text())
    assert "00000.mp4" not in {it["path"] for it in items} and len(items) == len(emb) == 6
    for i, it in enumerate(items):
        if it["path"] in before:  # kept rows are copied, re-embedded ones come out the same
            np.testing.assert_allclose(emb[i], before[it["path"]], atol=1e-5)
    assert all(r["path"] != "00000.mp4" for r in Searcher(out).search(trained.captions[0], 10))

    counts = build_index(work, trained.checkpoint, out, frames=2, progress=False)  # other settings: everything again
    assert counts["added"] == 6 and counts["kept"] == 0 and json.loads((out / "index.json").read_text())["frames"] == 2


def test_long_video_is_indexed_as_windows(trained, long_video, tmp_path):
    work = tmp_path / "videos"
    work.mkdir()
    shutil.copy2(long_video, work / "long.mp4")
    counts = build_index(work, trained.checkpoint, tmp_path / "index", window=8, stride=4, progress=False)
    assert counts["rows"] == 4
    items = json.loads((tmp_path / "index" / "items.json").read_text())
    assert [(it["start"], it["end"]) for it in items] == [(0.0, 8.0), (4.0, 12.0), (8.0, 16.0), (12.0, 20.0)]
    # Each window is embedded from its own frames: red for the first 10 s, blue after.
    searcher = Searcher(tmp_path / "index")
    red, blue = (
        {(r["start"], r["end"]): r["score"] for r in searcher.search(f"a {c} square moves left", 4)}
        for c in ("red", "blue")
    )
    assert red[0.0, 8.0] > red[12.0, 20.0] and blue[12.0, 20.0] > blue[0.0, 8.0], (red, blue)


def test_auto_backend_is_exact_for_small_indexes_and_faiss_for_large_ones():
    pytest.importorskip("faiss", reason="faiss-cpu (the `search` extra) is not installed")
    assert choose_backend("auto", FAISS_FROM - 1) == "exact" and choose_backend("auto", FAISS_FROM) == "faiss"
    assert choose_backend("exact", 10**7) == "exact" and choose_backend("faiss-ivf", 10) == "faiss-ivf"


def test_exact_and_faiss_agree(trained, test_index):
    pytest.importorskip("faiss", reason="faiss-cpu (the `search` extra) is not installed")
    # faiss-ivf searching all of its lists is exact too; with fewer it is approximate
    exact, flat, ivf = (
        Searcher(test_index),
        Searcher(test_index, backend="faiss"),
        Searcher(test_index, backend="faiss-ivf", nprobe=1000),
    )
    for q in trained.captions[::23]:
        a = exact.search(q, 10)
        for b in (flat.search(q, 10), ivf.search(q, 10)):
            assert [r["path"] for r in a] == [r["path"] for r in b]
            np.testing.assert_allclose([r["score"] for r in a], [r["score"] for r in b], atol=2e-4)
    assert (
        1 <= len(Searcher(test_index, backend="faiss-ivf").search(trained.captions[0], 10)) <= 10
    )  # default nprobe: 1/8 of the lists

    g = np.random.default_rng(0)
    emb = g.standard_normal((20_000, 64)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    q = emb[:5] + 0.3 * g.standard_normal((5, 64)).astype(np.float32)
    fv, fi = faiss_index(emb).search(q, 10)
    for chunk in (65536, 3000):  # one block, and blocks merged
        ev, ei = top_k_exact(q, emb, 10, chunk=chunk)
        assert (ei == fi).all()
        np.testing.assert_allclose(ev, fv, atol=1e-5)
    assert (faiss_ivf_index(emb, nprobe=10**6).search(q, 10)[1] == fi).all()


def test_mug_index(trained, tmp_path):
    """A Mug model stores per-frame features and a mask, and is searched with its own similarity."""
    from mugstan.engine.checkpoint import save_checkpoint
    from mugstan.models import build_model

    cfg = load_config(trained.root / "train.yaml", ["model.head=mug"])
    save_checkpoint(tmp_path / "mug", build_model(cfg.model), cfg)  # untrained: this checks the plumbing
    copy_videos(trained, tmp_path / "videos", range(3))
    build_index(tmp_path / "videos", tmp_path / "mug", tmp_path / "index", progress=False)
    assert np.load(tmp_path / "index" / "embeddings.npy").shape == (3, 4, 64)
    assert np.load(tmp_path / "index" / "mask.npy").all()
    searcher = Searcher(tmp_path / "index", backend="faiss")
    results = searcher.search("a red circle moves left", 5)
    assert searcher.backend == "mug" and len(results) == 3 and results[0]["score"] >= results[-1]["score"]


def test_mismatched_model_or_folder_is_refused(trained, test_index, tmp_path):
    from safetensors.torch import load_file, save_file

    other = tmp_path / "other"
    shutil.copytree(trained.checkpoint, other)
    state = load_file(str(other / "model.safetensors"))
    name = next(iter(state))
    state[name] = state[name] + 1e-3  # another model: the same architecture, other weights
    save_file(state, str(other / "model.safetensors"))
    with pytest.raises(ValueError, match="is not the model that built"):
        Searcher(test_index, checkpoint=str(other))
    with pytest.raises(ValueError, match="built with another model"):
        build_index(trained.videos, other, test_index, progress=False)
    with pytest.raises(ValueError, match="index into a new folder"):
        build_index(tmp_path, trained.checkpoint, test_index, progress=False)
    Searcher(
        test_index, checkpoint=str(shutil.copytree(trained.checkpoint, tmp_path / "moved"))
    )  # a copy is the same model


def test_search_cli(trained, test_index, capsys):
    assert cli(["search", str(test_index), trained.captions[3], "-k", "3", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert [r["rank"] for r in results] == [1, 2, 3]
    assert set(results[0]) == {"rank", "path", "start", "end", "score"} and results[0]["end"] == 1.0
    assert cli(["search", str(test_index), trained.captions[3], "-k", "2", "--backend", "exact"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    # a header naming the folder, then the same relative paths as --json
    assert lines[0] == f"2 best matches for {trained.captions[3]!r}; paths are relative to {trained.videos}"
    assert lines[1].split() == ["rank", "score", "window", "path"]
    assert len(lines) == 4 and lines[2].split()[-1] == results[0]["path"] and lines[2].split()[0] == "1"
    assert cli(["search", str(test_index), "a red circle", "-k", "0"]) == 2
    assert capsys.readouterr().err == "error: -k must be at least 1, got 0\n"


# ------------------------------------------------------------------------------------ serving


@pytest.fixture
def served(trained, tmp_path):
    """A small index with a symlink inside the folder, one pointing out of it (present when
    indexing), and a video swapped for a symlink out of the folder after indexing."""
    from mugstan.search.server import create_app

    work = tmp_path / "videos"
    copy_videos(trained, work, range(4))
    copy_videos(trained, work / "sub", [4])
    secret = tmp_path / "secret.mp4"
    shutil.copy2(trained.videos / trained.paths[10], secret)  # a real video outside the indexed folder
    (work / "inside_link.mp4").symlink_to(work / "00001.mp4")
    (work / "outside_link.mp4").symlink_to(secret)
    counts = build_index(work, trained.checkpoint, tmp_path / "index", progress=False)
    assert counts["added"] == 6 and counts["failed"] == 1
    report = json.loads((tmp_path / "index" / "report.json").read_text())
    assert report[0]["path"] == "outside_link.mp4" and "outside the indexed folder" in report[0]["reason"]
    (work / "00002.mp4").unlink()
    (work / "00002.mp4").symlink_to(secret)  # still listed in the index, now pointing out
    return create_app(Searcher(tmp_path / "index")), tmp_path, secret.read_bytes()


def test_find_videos_skips_symlinks_out(tmp_path):
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    (root / "a" / "x.mp4").write_bytes(b"x")
    (tmp_path / "out.mp4").write_bytes(b"o")
    (root / "out.mp4").symlink_to(tmp_path / "out.mp4")
    (root / "dangling.mp4").symlink_to(tmp_path / "missing.mp4")
    (root / "linked_dir").symlink_to(root / "a", target_is_directory=True)
    files, skipped = find_videos(root.resolve())
    assert [f.relative_to(root.resolve()).as_posix() for f in files] == ["a/x.mp4"]
    assert {s["path"] for s in skipped} == {"out.mp4", "dangling.mp4", "linked_dir"}


def test_server_security(served):
    from fastapi.testclient import TestClient

    app, tmp, secret = served
    client = TestClient(app)
    for ok in ["00001.mp4", "sub/00004.mp4", "inside_link.mp4"]:
        r = client.get("/media/" + ok)
        assert r.status_code == 200 and r.content[4:8] == b"ftyp", ok
    bad = [
        "00002.mp4",
        "outside_link.mp4",
        "..%2Fsecret.mp4",
        "%2e%2e/secret.mp4",
        "%2E%2E%2Fsecret.mp4",
        "%252e%252e/secret.mp4",
        "sub/..%2F..%2Fsecret.mp4",
        "/etc/passwd",
        "%2Fetc%2Fpasswd",
        str(tmp / "secret.mp4"),
        "",
        "sub",
        "sub/",
        "00001.mp4%00",
        "00001.mp4/",
        "sub//00004.mp4",
    ]
    for path in bad:
        r = client.get("/media/" + path)
        assert r.status_code == 404 and secret not in r.content, (path, r.status_code)
    for path in ["/static/", "/static/index.html", "/index.html", "/docs", "/openapi.json", "/media"]:
        assert client.get(path).status_code == 404, path

    for params in [
        {"q": "x" * 501},
        {"q": "a red circle", "k": 0},
        {"q": "a red circle", "k": 101},
        {"q": "a red circle", "k": "ten"},
        {"q": "   "},
        {"q": ""},
        {},
    ]:
        assert client.get("/api/search", params=params).status_code == 422, params
    ok = client.get("/api/search", params={"q": "a red circle moves left", "k": 100})
    assert ok.status_code == 200 and len(ok.json()["results"]) == 6  # k is capped by the index size
    assert "default-src 'none'" in client.get("/").headers["content-security-policy"]

    with live_server(app) as port:  # un-normalised paths, byte for byte, through a real server
        assert raw_get(port, "/media/00001.mp4")[0] == 200
        for raw in [
            "/media/../secret.mp4",
            "/media/sub/../../secret.mp4",
            "/media/./00002.mp4",
            "/media/%2e%2e/secret.mp4",
            "/media/..%2fsecret.mp4",
            "/media/" + str(tmp / "secret.mp4"),
            "/media/..\\secret.mp4",
            "/../secret.mp4",
        ]:
            status, body = raw_get(port, raw)
            assert status in (400, 404) and secret not in body, (raw, status)


def test_serve_binds_localhost_by_default():
    from mugstan.cli import build_parser

    args = build_parser("serve").parse_args(["serve", "some_index"])
    assert (args.host, args.port) == ("127.0.0.1", 8000)


# ------------------------------------------------------------------------------------ browser


@pytest.mark.browser
def test_page_in_headless_chromium(trained, long_video, tmp_path):
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium; .ci/run installs it)")
    playwright = pytest.importorskip(
        "playwright.sync_api", reason="the playwright Python package is not installed (pip install -e '.[dev]')"
    )
    from mugstan.search.server import create_app

    # 8 short videos with names that are HTML, and the 20 s video: 12 windows, all shown.
    work = tmp_path / "videos"
    names = copy_videos(trained, work, range(0, 60, 8), name='<img src=x onerror="window.pwned=2"> clip {} & q.mp4')
    shutil.copy2(long_video, work / "long.mp4")
    build_index(work, trained.checkpoint, tmp_path / "index", progress=False)
    query = 'a red square moves left <img src=x onerror="window.pwned=1">'
    with live_server(create_app(Searcher(tmp_path / "index"))) as port, playwright.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=chromium,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"http://127.0.0.1:{port}/")
            page.fill("#q", query)
            page.press("#q", "Enter")
            page.wait_for_selector(".result video", timeout=20_000)
            assert len(page.query_selector_all(".result")) == 12
            assert page.inner_text("#status") == f"12 results for \u201c{query}\u201d"  # the query shown as text
            assert page.evaluate("window.pwned") is None and page.query_selector("img") is None
            shown = page.eval_on_selector_all(".result a.path", "els => els.map(e => e.textContent)")
            assert sorted(shown) == sorted(names + ["long.mp4"] * 4)
            texts = page.eval_on_selector_all(".result .meta", "els => els.map(e => e.textContent)")
            assert all("score" in t for t in texts)
            assert page.inner_text(".result:first-child .meta").startswith("#1 \u00b7 score")
            # Every video plays its own window: the 4 windows of long.mp4 included.
            page.wait_for_function(
                """() => [...document.querySelectorAll('.result')].every(card => {
                const v = card.querySelector('video');
                return v.readyState >= 2 && !v.paused && v.currentTime >= +card.dataset.start - 0.05 """
                """&& v.currentTime <= +card.dataset.end + 0.3;
            })""",
                timeout=20_000,
            )
            windows_shown = page.eval_on_selector_all(
                ".result", "els => els.map(e => [e.dataset.start, e.dataset.end])"
            )
            assert sorted(w for w in windows_shown if w != ["0", "1"]) == [
                ["0", "8"],
                ["12", "20"],
                ["4", "12"],
                ["8", "16"],
            ]
            assert not errors, errors
            shot = tmp_path / "search_page.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 5000
        finally:
            browser.close()
    if os.environ.get("MUGSTAN_SCREENSHOTS"):
        dest = Path(os.environ["MUGSTAN_SCREENSHOTS"])
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, dest / "search_page.png")
    print(f"screenshot: {shot}")
