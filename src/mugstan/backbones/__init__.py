"""Backbones: open_clip's CLIP and CoCa read as video encoders (``clip``, ``coca``), built by
``build``, their weights files read and written by ``convert``."""

from pathlib import Path

MODEL_CONFIGS = Path(__file__).parent / "model_configs"  # mugstan's own architectures (mugstan-tiny, ...)


def register_configs() -> None:
    """Make mugstan's architectures known to open_clip by name (once)."""
    import open_clip

    if "mugstan-tiny" not in open_clip.list_models():
        open_clip.add_model_config(MODEL_CONFIGS)
