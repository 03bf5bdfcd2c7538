"""Spatio-temporal action detection (AVA) on the video encoder's patch tokens.

- ``model.py``: ``ActionDetector``, the RoI head (time-pooled patch map -> RoIAlign -> max -> dropout -> classifier);
- ``evaluate.py``: the AVA protocol (result CSV, frame-mAP@0.5 via ``mugstan.metrics.frame_map``);
- ``synthetic.py``: the detection comparison of ``mugstan bench synthetic --detection``.

The AVA v2.2 files are read by ``mugstan.data.datasets.ava``; see docs/detection.md.
"""
