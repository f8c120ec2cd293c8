"""Atomic writers for the hub tier; they live in :mod:`hfzoo.utils.atomic_files` so that models (whose saved
folders use them too) can import them without importing the hub tier."""

from ..utils.atomic_files import atomic_directory, save_pretrained_atomic, staged_directory

__all__ = ["atomic_directory", "save_pretrained_atomic", "staged_directory"]
