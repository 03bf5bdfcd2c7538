"""``mugstan chat``: ask a video chat model about a video, one question or a conversation.

    mugstan chat VIDEO "what is the man doing?" --config chat/msvd_qa_llava15_7b_stan   # zero-shot
    mugstan chat VIDEO --checkpoint runs/chat_projector/checkpoints/best                     # interactive
    mugstan chat VIDEO "question" --llava llava-hf/llava-1.5-7b-hf                            # plain CLIP frames

The answer is printed as it is generated (transformers' ``TextStreamer``). Without a question the
session is interactive: each question is asked with the earlier turns as context (the video's tokens
come once, at the start); an empty line or Ctrl-D ends it. bf16 on a GPU (``model.chat.dtype: auto``),
fp32 on a CPU. ``--frames`` sets T (default ``data.num_frames`` of the config).
"""

from __future__ import annotations

import argparse
import re
import sys
import time

OVERRIDE = re.compile(r"^[A-Za-z_][\w.]*=")


def configure_parser(parser: argparse.ArgumentParser) -> None:
    from mugstan.engine.distributed import device_arg

    parser.add_argument("video", help="a video file")
    parser.add_argument("question", nargs="?", help="the question; without it, an interactive session")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--checkpoint", help="a chat checkpoint folder (`mugstan train` with model.task: chat) or hub spec"
    )
    source.add_argument(
        "--config",
        help="a chat config, a file or a packaged name (chat/msvd_qa_llava15_7b_stan): zero-shot, nothing trained",
    )
    source.add_argument(
        "--llava", help="a LLaVA folder or hub name, used with CLIP frames and no branch (model.branch: none)"
    )
    parser.add_argument(
        "--frames", type=int, help="frames sampled from the video (default: the config's data.num_frames)"
    )
    parser.add_argument("--max-new-tokens", type=int, help="answer length limit (default: model.chat.max_new_tokens)")
    parser.add_argument(
        "--temperature", type=float, help="0: greedy (default: model.chat.temperature, 0); above 0: sampling"
    )
    parser.add_argument("--top-p", type=float, help="sampling: the top-p nucleus (default: model.chat.top_p, 1)")
    parser.add_argument("--seed", type=int, help="seed of the sampling (repeatable answers at a temperature above 0)")
    parser.add_argument("--device", type=device_arg, help="cpu, cuda, cuda:1, ... (default: cuda when there is one)")
    parser.add_argument("--no-stream", action="store_true", help="print each answer when it is complete")
    parser.add_argument(
        "overrides", nargs="*", help="dotted key=value overrides, e.g. model.chat.video_tokens=frame_mean"
    )


def load_chat_model(args, device):
    """(VideoChatModel in eval mode, ExperimentConfig) from --checkpoint, --config or --llava (+ overrides)."""
    from mugstan.config import ExperimentConfig, Task, load_config, model_config
    from mugstan.engine.checkpoint import load_model
    from mugstan.errors import ArgumentError
    from mugstan.models import build_model

    if args.checkpoint:
        model, cfg = load_model(args.checkpoint, device, args.overrides)
        if cfg is None or cfg.model.task != Task.chat:
            raise ArgumentError(
                f"--checkpoint {args.checkpoint}: not a chat checkpoint (model.task: chat); use --config or --llava"
            )
        return model, cfg
    if args.config:
        cfg = load_config(args.config, args.overrides, check_files=False)  # one video: no dataset file is read
        if cfg.model.task != Task.chat:
            raise ArgumentError(
                f"--config {args.config}: model.task is {cfg.model.task}, not chat "
                "(the chat/ configs of `mugstan config list` are)"
            )
    else:
        overrides = [o if o.startswith("model.") else f"model.{o}" for o in args.overrides]
        cfg = ExperimentConfig(
            name="chat",
            model=model_config({"task": "chat", "branch": "none", "chat": {"llava": args.llava}}, overrides, "--llava"),
        )
        cfg.data.num_frames = 8
    return build_model(cfg.model).to(device).eval(), cfg


def read_video(model, cfg, path: str, frames: int, start=None, end=None):
    """frames [1, T, 3, S, S] (CLIP-normalised, S = the tower's input size), frame_mask [1, T];
    ``start`` / ``end`` (seconds) bound the window read (a search result's)."""
    from dataclasses import replace

    import torch

    from mugstan.data.datasets import Clip, ClipReader

    data = replace(
        cfg.data, image_size=model.backbone.image_size, resize_short=None
    )  # the config itself stays as loaded
    clip = ClipReader(data, train=False, num_frames=frames)(Clip(str(path), start, end), 0)
    return clip[None], torch.ones(1, clip.shape[0], dtype=torch.bool)


def main(args: argparse.Namespace) -> int:
    import torch
    from transformers import TextStreamer

    from mugstan.config import ConfigError
    from mugstan.data.video import VideoError, probe
    from mugstan.errors import ArgumentError

    if args.question and OVERRIDE.match(args.question):  # `mugstan chat v.mp4 key=value` (no question)
        args.overrides, args.question = [args.question, *args.overrides], None
    if args.question is not None and not args.question.strip():
        raise ArgumentError(
            "mugstan chat: the question is blank; ask something, or leave the question out for an interactive session"
        )
    if (args.temperature is not None and args.temperature < 0) or (args.top_p is not None and not 0 < args.top_p <= 1):
        raise ArgumentError(
            f"mugstan chat: --temperature {args.temperature} must be >= 0 (0: greedy) "
            f"and --top-p {args.top_p} in (0, 1]"
        )
    probe(args.video)  # a missing or unreadable video stops here, before a 7B model loads
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    try:
        model, cfg = load_chat_model(args, device)
        frames, mask = read_video(model, cfg, args.video, args.frames or cfg.data.num_frames)
    except (ConfigError, VideoError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    frames, mask = frames.to(device), mask.to(device)
    tok = model.tokenizer.tokenizer
    n = model.num_video_tokens(frames.shape[1])
    print(
        f"{args.video}: {frames.shape[1]} frames -> {n} video tokens ({cfg.model.chat.video_tokens}, branch "
        f"{cfg.model.branch}) on {device}",
        file=sys.stderr,
    )

    def ask(turns) -> str:
        streamer = None if args.no_stream else TextStreamer(tok, skip_prompt=True, skip_special_tokens=True)
        start = time.time()
        if args.seed is not None:
            torch.manual_seed(args.seed)
        answer = model.answer(
            frames,
            mask,
            [turns],
            args.max_new_tokens,
            streamer=streamer,
            temperature=args.temperature,
            top_p=args.top_p,
        )[0]
        if args.no_stream:
            print(answer)
        print(f"({time.time() - start:.2f} s)", file=sys.stderr)
        return answer

    if args.question:
        ask([(args.question, None)])
        return 0
    turns: list = []
    while True:
        try:
            question = input("you> ").strip()
        except EOFError:
            print()
            break
        if not question:
            break
        print("model> ", end="", flush=True)
        turns.append((question, ask([*turns, (question, None)])))
    return 0
