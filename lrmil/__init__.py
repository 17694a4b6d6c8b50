"""lrmil: low-resolution multiple-instance learning for whole slide images, distilled from high
resolution (LRMIL, Shin & Jeong, MICCAI 2026)."""

__version__ = "0.1.0"
