"""Frame-level branches over the backbone: none (CLIP per frame) and STAN."""
