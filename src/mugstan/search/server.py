"""``mugstan serve``: a search page for an index (FastAPI + one static page).

    mugstan serve INDEX_DIR [--host 127.0.0.1 --port 8000]

Routes (nothing else is served, there is no directory listing):

- ``/``: the page (``static/index.html``) and ``/search.js``, its script;
- ``/api/search?q=...&k=...``: ``{"query", "results": [{rank, path, start, end, score}], "captions"}``;
  ``q`` must be 1-500 characters and not blank, ``k`` 1-100, else 422; ``captions`` says whether
  the index's model can caption (a CoCa backbone), and the page then shows a Caption button;
- ``/api/ask?path=...&start=...&end=...&q=...``: ``{"path", "start", "end", "question", "answer"}``:
  a video chat model (``mugstan serve INDEX --chat CHECKPOINT_OR_CONFIG``, ``mugstan.chat``) answers
  the question about the result's window (greedy unless the chat config sets ``model.chat.temperature``);
  without ``--chat`` the page has no Ask box;
- ``/api/ask/stream`` (same parameters): the answer as plain text, streamed as it is generated; the
  page's Ask box shows it growing;
- ``/api/caption?path=...&start=...&end=...``: ``{"path", "start", "end", "caption"}``, the window
  captioned by the model's decoder (``mugstan.caption``, open_clip's default decoding, cached); ``path`` as
  for ``/media`` (404 otherwise), 400 for a model without a decoder;
- ``/media/{path}``: a video of the index. ``path`` must be one of the relative paths listed in
  the index's ``index.json`` (compared as a string, after URL decoding, before the file system is
  touched), so ``../``, absolute paths and encoded traversal (``%2e%2e/``, ``..%2f``) are 404;
  the file's real path (symlinks resolved) must also lie inside the indexed folder, so a file
  swapped for a symlink out of the folder after indexing is 404 too.

The server binds to 127.0.0.1 unless ``--host`` says otherwise: anyone who can reach it can search
the index and watch every indexed video. The page gets a Content-Security-Policy that allows only
its own script and media; file names are inserted as text, never as HTML.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

logger = logging.getLogger(__name__)
MAX_QUERY = 500
MAX_K = 100
STATIC = Path(__file__).parent / "static"
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "media-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def create_app(searcher, chat=None):
    """The FastAPI app for a ``mugstan.search.query.Searcher``; ``chat``: (video chat model, its
    ExperimentConfig) to answer questions about results, or None."""
    from fastapi import FastAPI, HTTPException, Query
    from fastapi.responses import FileResponse, Response, StreamingResponse

    app = FastAPI(title="mugstan search", docs_url=None, redoc_url=None, openapi_url=None)
    from mugstan.caption import can_caption, caption_file
    from mugstan.data.video import VideoError

    root = searcher.root.resolve()
    indexed = frozenset(searcher.meta["files"])
    captions = can_caption(searcher.model)
    caption_cache: dict[tuple[str, float, float], str] = {}

    def indexed_file(path: str) -> Path:
        if path not in indexed:  # only the exact relative paths of the index, checked before any file access
            raise HTTPException(404, "not in the index")
        real = (root / path).resolve()
        if root not in real.parents or not real.is_file():  # swapped for a symlink out of the folder, or gone
            raise HTTPException(404, "not in the index")
        return real

    @app.get("/")
    def page() -> Response:
        return Response(
            (STATIC / "index.html").read_text(), media_type="text/html; charset=utf-8", headers=PAGE_HEADERS
        )

    @app.get("/search.js")
    def script() -> Response:
        return Response(
            (STATIC / "search.js").read_text(), media_type="text/javascript; charset=utf-8", headers=PAGE_HEADERS
        )

    @app.get("/api/search")
    def search(q: str = Query(..., min_length=1, max_length=MAX_QUERY), k: int = Query(12, ge=1, le=MAX_K)) -> dict:
        if not q.strip():
            raise HTTPException(422, "the query is blank")
        return {"query": q, "results": searcher.search(q, k), "captions": captions, "ask": chat is not None}

    def window_frames(path: str, start: float, end: float, q: str):
        """The chat model's frames [1, T, 3, S, S] and mask [1, T] of one result's window, on the model's device."""
        if chat is None:
            raise HTTPException(400, "no video chat model: start `mugstan serve INDEX --chat CHECKPOINT_OR_CONFIG`")
        if not q.strip():
            raise HTTPException(422, "the question is empty")
        real = indexed_file(path)
        model, cfg = chat
        from mugstan.chat.cli import read_video

        try:
            frames, mask = read_video(model, cfg, real, cfg.data.num_frames, start, end)
        except VideoError as err:
            raise HTTPException(422, str(err)) from None
        device = next(model.parameters()).device
        return frames.to(device), mask.to(device)

    @app.get("/api/ask")
    def ask(
        path: str,
        start: float = Query(..., ge=0),
        end: float = Query(..., gt=0),
        q: str = Query(..., min_length=1, max_length=MAX_QUERY),
    ) -> dict:
        """A question about one result's window, answered by the video chat model."""
        frames, mask = window_frames(path, start, end, q)
        answer = chat[0].answer(frames, mask, [[(q, None)]])[0]
        return {"path": path, "start": start, "end": end, "question": q, "answer": answer}

    @app.get("/api/ask/stream")
    def ask_stream(
        path: str,
        start: float = Query(..., ge=0),
        end: float = Query(..., gt=0),
        q: str = Query(..., min_length=1, max_length=MAX_QUERY),
    ) -> StreamingResponse:
        """The same answer as ``/api/ask``, as plain text streamed while it is generated (what the page shows)."""
        import threading

        from transformers import TextIteratorStreamer

        frames, mask = window_frames(path, start, end, q)
        model = chat[0]
        streamer = TextIteratorStreamer(
            model.tokenizer.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=600
        )

        def generate():
            try:
                model.answer(frames, mask, [[(q, None)]], streamer=streamer)
            except Exception:
                streamer.end()  # the response ends instead of waiting for tokens that will not come
                raise

        threading.Thread(target=generate, daemon=True).start()
        return StreamingResponse(
            streamer, media_type="text/plain; charset=utf-8", headers={"X-Content-Type-Options": "nosniff"}
        )

    @app.get("/api/caption")
    def caption(path: str, start: float = Query(..., ge=0), end: float = Query(..., gt=0)) -> dict:
        real = indexed_file(path)
        if not captions:
            raise HTTPException(400, "this index's model has no caption decoder: captions need a CoCa backbone")
        if end <= start:
            raise HTTPException(422, "end must be after start")
        key = (path, start, end)
        if key not in caption_cache:
            try:
                caption_cache[key] = caption_file(
                    searcher.model, searcher.cfg, real, start, end, frames=searcher.meta["frames"]
                )
            except VideoError as err:
                raise HTTPException(422, f"cannot decode this window: {err}") from None
        return {"path": path, "start": start, "end": end, "caption": caption_cache[key]}

    @app.get("/media/{path:path}")
    def media(path: str) -> FileResponse:
        return FileResponse(indexed_file(path), headers={"X-Content-Type-Options": "nosniff"})

    return app


def configure_parser(parser: argparse.ArgumentParser) -> None:
    from mugstan.search.query import add_backend_arguments

    parser.add_argument("index_dir", help="an index folder written by `mugstan index`")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port, 1-65535 (default 8000)")
    parser.add_argument(
        "--chat",
        help="a video chat checkpoint folder or chat config (chat/msvd_qa_llava15_7b_stan: `mugstan config list`): "
        "the page then has an Ask box per result (mugstan.chat; see docs/chat.md)",
    )
    add_backend_arguments(parser)


def main(args: argparse.Namespace) -> int:
    from mugstan.errors import ArgumentError, UserError

    if not 1 <= args.port <= 65535:
        raise ArgumentError(f"--port {args.port}: a TCP port is 1-65535 (default 8000)")
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError:
        raise UserError("`mugstan serve` needs fastapi and uvicorn: pip install 'mugstan[search]'") from None

    from mugstan.search.query import open_searcher

    chat = None
    if args.chat:
        from types import SimpleNamespace

        import torch

        from mugstan.chat.cli import load_chat_model

        yaml_file = args.chat.endswith((".yaml", ".yml"))
        spec = SimpleNamespace(
            checkpoint=None if yaml_file else args.chat,
            config=args.chat if yaml_file else None,
            llava=None,
            overrides=[],
        )
        chat = load_chat_model(spec, torch.device(args.device if hasattr(args, "device") else "cpu"))
    app = create_app(open_searcher(args), chat)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning(
            f"warning: listening on {args.host}: anyone who can reach it can search the index and watch its videos"
        )
    print(f"serving {args.index_dir} on http://{args.host}:{args.port}/ (Ctrl-C stops)")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
