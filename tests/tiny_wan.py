"""The tests' tiny Wan-scale folders: workbench/models/tiny_wan.py (kept importable as `tiny_wan`)."""
from workbench.models.tiny_wan import *  # noqa: F401,F403
from workbench.models.tiny_wan import TINY, Z_DIM, save_image_encoder, save_text_encoder, save_tiny_wan  # noqa: F401
