"""The video chat model: a LLaVA language model that sees a video through mugstan's video encoder.

    frames [B, T, 3, H, W] --CLIP tower (LLaVA's, cut at its feature layer)--> --branch (none | STAN)-->
        patches [B, T, P, D] --video_tokens--> tokens [B, N, D] --LLaVA projector--> [B, N, H]
    prompt ids [B, S] with N image-token placeholders per row --embed, tokens scattered in--> LLaVA LM

The video tokens (``model.chat.video_tokens``):

- ``temporal_spatial`` (default; Video-ChatGPT's pooling, BT-Adapter's tokens): T temporal tokens
  (each frame's patches averaged, in frame order) then P spatial tokens (each patch averaged over
  the real frames), N = T + P: 8 + 576 = 584 for 8 frames of LLaVA-1.5's 336-px ViT-L/14, about the
  576 tokens of one LLaVA image. With STAN the patches have attended over time, so even the spatial
  tokens carry motion. Padded frames' temporal tokens are masked out of the LM's attention.
- ``frame_mean``: the P patch tokens of CLIP (branch bypassed) averaged over frames: what LLaVA
  sees of "the average frame". Order-blind by construction (a clip and the clip reversed give the
  same tokens); the control for what the branch adds.

Nothing is trained for zero-shot chat: LLaVA's tower and projector are used as released and the
branch comes from a mugstan checkpoint (``model.chat.branch_weights``), ideally trained with the
tower frozen (as BT-Adapter does) so the projector still reads what it was trained on. Projector
tuning (``mugstan train`` with ``model.task: chat``) trains the parts named in ``model.chat.tune``
(``projector`` by default); everything else is frozen and kept in eval mode.

A chat checkpoint holds the branch, the projector and whatever else ``model.chat.tune`` names
(``state_dict`` is those tensors only: a 7B language model is not copied into every checkpoint);
``model.chat.llava`` supplies the rest when it is loaded.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
import torch.nn as nn

from mugstan.backbones.clip import CLIPBackbone
from mugstan.backbones.convert import WeightsError
from mugstan.chat.prompt import ChatPrompt
from mugstan.config import Branch, ChatConfig, ConfigError, ModelConfig, VideoTokens
from mugstan.errors import MismatchError, MissingFileError
from mugstan.heads.base import masked_mean

Turns = Sequence[tuple[str, Optional[str]]]


class VideoChatModel(nn.Module):
    """Video encoder (``backbone`` + ``branch``) -> ``projector`` -> ``llm`` (LLaVA without its tower)."""

    input_names = ("frames", "frame_mask", "input_ids", "attention_mask", "labels")

    def __init__(self, backbone: CLIPBackbone, branch: nn.Module, projector: nn.Module, llm: nn.Module, tokenizer,
                 cfg: ChatConfig, image_token_id: int, keep_cls: bool = False):
        super().__init__()
        self.backbone, self.branch, self.projector, self.llm = backbone, branch, projector, llm
        self.cfg, self.image_token_id, self.keep_cls = cfg, image_token_id, keep_cls
        self.tuned = tuple(cfg.tune)
        self.tokenizer = ChatPrompt(tokenizer, image_token_id, self.num_video_tokens, cfg.system, cfg.user,
                                    cfg.assistant, cfg.max_length, cfg.chat_template)

    # ---- video tokens -------------------------------------------------------------------
    @property
    def num_patches(self) -> int:
        return self.backbone.num_patches

    @property
    def num_spatial(self) -> int:
        """Spatial tokens per video: P, or 1 + P when LLaVA keeps the class token
        (``vision_feature_select_strategy: full``)."""
        return self.num_patches + int(self.keep_cls)

    def num_video_tokens(self, num_frames: int) -> int:
        """N, the tokens one video of ``num_frames`` frames becomes."""
        if self.cfg.video_tokens == VideoTokens.frame_mean:
            return self.num_spatial
        return num_frames + self.num_spatial

    def video_tokens(self, frames: torch.Tensor, frame_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """frames [B, T, 3, H, W], frame_mask [B, T] bool -> (tokens [B, N, D], token mask [B, N] bool)."""
        if frames.dim() != 5 or frames.shape[2] != 3:
            raise ValueError(f"frames must be [B, T, 3, H, W], got {tuple(frames.shape)}")
        b, t = frames.shape[:2]
        if frame_mask.shape != (b, t) or not frame_mask.any(1).all():
            raise ValueError(
                f"frame_mask must be [B, T] = {(b, t)} with a real frame in every row, got {tuple(frame_mask.shape)}"
            )
        spatial_only = self.cfg.video_tokens == VideoTokens.frame_mean
        vision = self.backbone.encode_frames(frames.flatten(0, 1), taps=() if spatial_only else self.branch.taps)
        last = vision.last.view(b, t, *vision.last.shape[1:])  # [B, T, 1+P, D]
        spatial_mask = frame_mask.new_ones(b, self.num_spatial)
        if spatial_only:
            return masked_mean(last if self.keep_cls else last[:, :, 1:], frame_mask), spatial_mask
        patches = self.branch(vision, self.backbone, frame_mask).patches  # [B, T, P, D]
        temporal = patches.mean(2)  # [B, T, D]
        spatial = masked_mean(patches, frame_mask)  # [B, P, D]
        if self.keep_cls:  # "full": the tower's class token (averaged over the real frames) leads, as in LLaVA's image
            spatial = torch.cat([masked_mean(last[:, :, :1], frame_mask), spatial], 1)
        return torch.cat([temporal, spatial], 1), torch.cat([frame_mask, spatial_mask], 1)

    # ---- language model inputs ----------------------------------------------------------
    def embed(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        frames: torch.Tensor,
        frame_mask: torch.Tensor,
        video_of: Optional[torch.Tensor] = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """input_ids [B, S] (N image tokens per row), attention_mask [B, S], frames [V, T, 3, H, W], frame_mask [V, T]
        -> (inputs_embeds [B, S, H], attention_mask [B, S] long): the projected tokens of video ``video_of[b]``
        (default b, V = B) replace row b's image tokens, in order; padded frames' tokens are masked."""
        place = input_ids == self.image_token_id
        n = self.num_video_tokens(frames.shape[1])
        counts = place.sum(1)
        if (counts != n).any():
            raise ValueError(
                f"each prompt needs {n} image tokens (id {self.image_token_id}) for a {frames.shape[1]}-frame video, "
                f"got {counts.tolist()}; build prompts with model.tokenizer"
            )
        dtype = self.llm.get_input_embeddings().weight.dtype
        with torch.autocast(frames.device.type, torch.bfloat16, enabled=dtype == torch.bfloat16):
            tokens, token_mask = self.video_tokens(frames, frame_mask)
            video = self.projector(tokens.to(next(self.projector.parameters()).dtype))  # [V, N, H]
        if video_of is not None:
            video, token_mask = video[video_of], token_mask[video_of]
        if video.shape[0] != input_ids.shape[0]:
            raise ValueError(f"{video.shape[0]} videos for {input_ids.shape[0]} prompts: pass video_of")
        embeds = self.llm.get_input_embeddings()(input_ids)
        embeds = embeds.masked_scatter(place.unsqueeze(-1), video.to(embeds.dtype))
        mask = attention_mask.clone().bool()
        mask[place] = token_mask.flatten()
        return embeds, mask.long()

    def forward(
        self,
        frames: torch.Tensor,
        frame_mask: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor,
    ) -> dict:
        """A batch of conversations (``model.tokenizer`` items, padded right) -> {"logits": [B, S, V],
        "labels": [B, S]}, S = the longest item of the batch (the common padding is trimmed)."""
        s = int(attention_mask.sum(1).max())
        input_ids, attention_mask, labels = input_ids[:, :s], attention_mask[:, :s], labels[:, :s]
        embeds, mask = self.embed(input_ids, attention_mask, frames, frame_mask)
        return {"logits": self.llm(inputs_embeds=embeds, attention_mask=mask).logits, "labels": labels}

    # ---- answers ------------------------------------------------------------------------
    @torch.no_grad()
    def answer(
        self,
        frames: torch.Tensor,
        frame_mask: torch.Tensor,
        conversations: Sequence[Turns],
        max_new_tokens: Optional[int] = None,
        streamer=None,
        video_of: Optional[Sequence[int]] = None,
        temperature: Optional[float] = None,
        top_p: Optional[float] = None,
    ) -> list[str]:
        """Answers to the last question of each conversation about its video: greedy, or sampled when the
        temperature (default ``model.chat.temperature``) is above 0, from the top-p nucleus (``model.chat.top_p``).

        frames [V, T, 3, H, W], frame_mask [V, T]; conversations[b]: [(question, answer), ..., (question, None)]
        about video ``video_of[b]`` (default: b, V = B; several questions can share one video, encoded once).
        Prompts are padded on the left; ``streamer`` (e.g. transformers' TextStreamer, B = 1) gets the tokens as
        they come.
        Sampling draws from torch's global generator (``torch.manual_seed`` makes it repeatable).
        """
        temperature = self.cfg.temperature if temperature is None else temperature
        top_p = self.cfg.top_p if top_p is None else top_p
        if temperature < 0 or not 0 < top_p <= 1:
            raise ValueError(f"temperature={temperature} must be >= 0 (0: greedy) and top_p={top_p} in (0, 1]")
        sampling = (
            {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": None}
            if temperature > 0
            else {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        )
        if video_of is None and len(conversations) != frames.shape[0]:
            raise ValueError(f"{len(conversations)} conversations for {frames.shape[0]} videos: pass video_of")
        prompts = [self.tokenizer.prompt_ids(turns, frames.shape[1]) for turns in conversations]
        width = max(len(p) for p in prompts)
        pad = self.tokenizer.pad_id
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=frames.device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=frames.device)
        rows = None if video_of is None else torch.as_tensor(list(video_of), device=frames.device)
        embeds, mask = self.embed(ids, mask, frames, frame_mask, rows)
        tok = self.tokenizer.tokenizer
        out = self.llm.generate(
            inputs_embeds=embeds,
            attention_mask=mask,
            max_new_tokens=max_new_tokens or self.cfg.max_new_tokens,
            num_beams=1,
            streamer=streamer,
            pad_token_id=pad,
            eos_token_id=tok.eos_token_id,
            **sampling,
        )
        return [tok.decode(row, skip_special_tokens=True).strip() for row in out]

    # ---- training -----------------------------------------------------------------------
    def train(self, mode: bool = True) -> "VideoChatModel":
        """Frozen parts stay in eval mode (no drop-path / dropout) while the tuned ones train."""
        super().train(mode)
        for name in ("backbone", "branch", "projector", "llm"):
            if name not in self.tuned:
                getattr(self, name).eval()
        return self

    def saved_parts(self) -> tuple[str, ...]:
        """What a chat checkpoint holds: the branch, the projector and the tuned parts."""
        return tuple(dict.fromkeys(("branch", "projector", *self.tuned)))

    def state_dict(self, *args, destination=None, prefix: str = "", keep_vars: bool = False):
        """Only ``saved_parts`` (the LLaVA checkpoint holds the rest)."""
        own = {}
        for name in self.saved_parts():
            getattr(self, name).state_dict(destination=own, prefix=f"{prefix}{name}.", keep_vars=keep_vars)
        if destination is None:
            return own
        destination.update(own)
        return destination

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Load ``saved_parts``' tensors; returns (missing, unexpected) like ``nn.Module.load_state_dict``."""
        from torch.nn.modules.module import _IncompatibleKeys

        expected = set(self.state_dict())
        missing, unexpected = sorted(expected - set(state_dict)), sorted(set(state_dict) - expected)
        if strict and (missing or unexpected):
            raise MismatchError(f"chat checkpoint does not fit: missing {missing[:5]}, unexpected {unexpected[:5]}")
        for name in self.saved_parts():
            part = {k[len(name) + 1 :]: v for k, v in state_dict.items() if k.startswith(name + ".")}
            getattr(self, name).load_state_dict(part, strict=False, assign=assign)
        return _IncompatibleKeys(missing, unexpected)


# ---- building ---------------------------------------------------------------------------
def resolve_dtype(name: str) -> torch.dtype:
    """model.chat.dtype -> torch dtype (auto: bf16 when a GPU is there, else fp32)."""
    if str(name) == "auto":
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    return {"fp32": torch.float32, "bf16": torch.bfloat16}[str(name)]


def _llava_source(spec: str) -> str:
    """A folder or hub name for ``from_pretrained``; mugstan's ``hf-hub:`` / ``local-dir:`` specs are resolved."""
    from mugstan.hub import is_spec, resolve_path

    if is_spec(spec):  # safetensors, configs and tokenizer files only: never a pickle
        return str(resolve_path(spec, ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"]))
    return spec


def load_branch_weights(branch: nn.Module, spec: str, tower_layers: int, chat: Optional[ChatConfig] = None) -> None:
    """Put the ``branch.*`` tensors of a mugstan checkpoint (folder, ``mugstan convert`` file or hub spec) into
    ``branch``.

    The branch must have been trained over a tower of the same depth: its spatial blocks are copies of
    the tower's last K blocks and its inputs those blocks' outputs. A retrieval checkpoint's tower
    blocks say its depth; a chat checkpoint (``config.yaml`` with ``model.task: chat``) over the same
    LLaVA checkpoint as ``chat`` must name the same ``feature_layer``.
    """
    from mugstan.errors import MismatchError, MissingFileError
    from mugstan.files import read_safetensors
    from mugstan.hub import resolve_checkpoint

    path = resolve_checkpoint(spec)
    file = path / "model.safetensors" if path.is_dir() else path
    if not file.is_file():
        raise MissingFileError(
            f"model.chat.branch_weights: {file} does not exist (give a mugstan checkpoint folder or a "
            "`mugstan convert --format stan` .safetensors)"
        )
    tensors = read_safetensors(
        file,
        f"model.chat.branch_weights: {spec} is damaged or not weights; model.chat.branch_weights takes "
        "a mugstan checkpoint folder or a `mugstan convert` file (a damaged one: train it again or download it again)",
    )
    own = {k[len("branch.") :]: v for k, v in tensors.items() if k.startswith("branch.")}
    if not own:
        raise MismatchError(
            f"model.chat.branch_weights: {file} holds no branch.* tensors (is it a STAN / Mug-STAN checkpoint?)"
        )
    blocks = {k.split(".")[5] for k in tensors if k.startswith("backbone.clip.visual.transformer.resblocks.")}
    if blocks and len(blocks) != tower_layers:
        raise MismatchError(
            f"model.chat.branch_weights: {file} was trained over a {len(blocks)}-block CLIP tower, but the chat "
            f"model's tower has {tower_layers} blocks (LLaVA's feature layer): train the branch on the tower cut at "
            f"that layer, or set model.chat.feature_layer so that {len(blocks)} blocks are kept"
        )
    trained = _chat_section(path / "config.yaml") if path.is_dir() else None
    if (
        chat is not None
        and trained is not None
        and trained.get("llava") == chat.llava
        and trained.get("feature_layer") != chat.feature_layer
    ):
        raise MismatchError(
            f"model.chat.branch_weights: {spec} was trained at model.chat.feature_layer={trained.get('feature_layer')} "
            f"of {chat.llava}, but this model reads feature_layer={chat.feature_layer}: its tower depth differs; set "
            "model.chat.feature_layer="
            f"{'null' if trained.get('feature_layer') is None else trained.get('feature_layer')}"
        )
    missing, unexpected = branch.load_state_dict(own, strict=False)
    if missing or unexpected:
        raise MismatchError(
            f"model.chat.branch_weights: {file} does not fit model.branch/model.stan: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )


def _chat_section(config_file: Path) -> Optional[dict]:
    """``model.chat`` of a chat checkpoint's config.yaml; None when there is none or it is not a chat model."""
    import yaml

    if not config_file.is_file():
        return None
    try:
        model = (yaml.safe_load(config_file.read_text()) or {}).get("model") or {}
    except (yaml.YAMLError, AttributeError):
        return None  # not a readable mugstan config: the tensors alone are checked
    return model.get("chat") or {} if model.get("task") == "chat" else None


def processor_chat_template(source: str) -> Optional[str]:
    """The chat template a LLaVA checkpoint keeps with its processor (``chat_template.jinja``, or
    ``chat_template.json``'s ``chat_template``) when its tokenizer has none; None when there is none."""
    import json

    from transformers.utils import cached_file

    for name in ("chat_template.jinja", "chat_template.json"):
        path = cached_file(
            source, name, _raise_exceptions_for_missing_entries=False, _raise_exceptions_for_connection_errors=False
        )
        if path:
            text = Path(path).read_text(encoding="utf-8")
            return text if name.endswith(".jinja") else json.loads(text).get("chat_template")
    return None


def check_llava_config(source: str, name: str) -> str:
    """Read ``config.json`` of ``source`` (nothing else is loaded) and refuse what is not a LLaVA-1.5-style
    checkpoint; returns its ``vision_feature_select_strategy`` (``default``: class token dropped, ``full``: kept)."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as err:
        raise FileNotFoundError(
            f"model.chat.llava={name!r}: cannot read its config.json ({str(err).splitlines()[0]}); "
            "give a LLaVA checkpoint folder or hub name"
        ) from None
    if config.model_type != "llava":
        raise WeightsError(
            f"model.chat.llava={name!r}: config.json has model_type {config.model_type!r}, not 'llava'; "
            "give a LlavaForConditionalGeneration checkpoint (e.g. llava-hf/llava-1.5-7b-hf), not a text-only model"
        )
    vision = getattr(config.vision_config, "model_type", None)
    if vision != "clip_vision_model":
        raise WeightsError(
            f"model.chat.llava={name!r}: the vision tower is {vision!r}; mugstan's branch needs a CLIP ViT tower "
            "(clip_vision_model), as in LLaVA-1.5"
        )
    strategy = config.vision_feature_select_strategy
    if strategy not in ("default", "full"):
        raise WeightsError(
            f"model.chat.llava={name!r}: vision_feature_select_strategy={strategy!r}; expected default or full"
        )
    return strategy


def build_chat_model(cfg: ModelConfig, build_branch: Callable[[CLIPBackbone], nn.Module]) -> VideoChatModel:
    """LLaVA from ``cfg.chat.llava``; its CLIP tower cut at the feature layer + the branch that
    ``build_branch(tower)`` makes for it (``mugstan.models.build_model`` passes its own); frozen but
    for ``cfg.chat.tune``."""
    from transformers import AutoTokenizer, LlavaForConditionalGeneration

    from mugstan.chat.tower import backbone_from_hf_tower

    c = cfg.chat
    source = _llava_source(c.llava)
    dtype = resolve_dtype(c.dtype)
    strategy = check_llava_config(source, c.llava)  # before anything is allocated
    try:
        llava, loading = LlavaForConditionalGeneration.from_pretrained(
            source, dtype=dtype, use_safetensors=True, output_loading_info=True
        )
        tokenizer = AutoTokenizer.from_pretrained(source)
        if tokenizer.chat_template is None:
            tokenizer.chat_template = processor_chat_template(source)
    except OSError as err:
        raise MissingFileError(
            f"model.chat.llava={c.llava!r}: cannot load a LLaVA checkpoint with safetensors weights and a "
            f"tokenizer from it ({str(err).splitlines()[0]}); give a local folder or a hub name"
        ) from None
    missing = sorted(loading["missing_keys"])
    if missing:  # transformers would initialise them at random: a different model (and answers) every run
        parts = sorted({k.split(".")[1] if k.startswith("model.") else k.split(".")[0] for k in missing})
        raise WeightsError(
            f"model.chat.llava={c.llava!r}: the checkpoint lacks {len(missing)} tensors ({', '.join(parts)}; "
            f"e.g. {missing[0]}), which would be initialised at random; give a complete LLaVA checkpoint"
        )
    layer = llava.config.vision_feature_layer if c.feature_layer is None else c.feature_layer
    if not isinstance(layer, int):
        raise ConfigError(
            f"{c.llava}: vision_feature_layer={layer} selects several layers; set model.chat.feature_layer to one"
        )
    backbone = backbone_from_hf_tower(llava.model.vision_tower, layer, str(c.llava))
    projector = llava.model.multi_modal_projector
    llava.model.vision_tower, llava.model.multi_modal_projector = None, None  # the chat model owns them now
    branch = build_branch(backbone)
    if c.branch_weights:
        load_branch_weights(branch, c.branch_weights, backbone.vision_layers, c)
    elif cfg.branch == Branch.stan and "branch" not in c.tune:
        warnings.warn(
            "model.branch=stan without model.chat.branch_weights: the STAN branch is freshly initialised and frozen; "
            "zero-shot chat wants a trained one (a STAN / Mug-STAN checkpoint trained on this tower)",
            stacklevel=2,
        )
    model = VideoChatModel(
        backbone, branch, projector, llava, tokenizer, c, llava.config.image_token_id, strategy == "full"
    )
    model.requires_grad_(False)
    for name in ("backbone", "branch", "projector", "llm"):
        part = getattr(model, name)
        if name in c.tune:  # trained: fp32 master weights (autocast does the rest)
            part.float().requires_grad_(True)
        else:
            part.to(dtype)
    model.train()
    return model
