"""mugstan: turn image-text CLIP models into video models.

STAN, Mug-STAN, CLIP2Video and CLIP4Clip's heads on one open_clip backbone, for video-text
retrieval, video recognition and text-to-video search. See docs/architecture.md for the modules.
Nothing is imported eagerly: ``import mugstan`` is cheap and downloads nothing.
"""

__version__ = "0.1.0"
