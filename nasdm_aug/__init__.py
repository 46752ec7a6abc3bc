"""nasdm-aug: nuclei-aware semantic diffusion models for annotated H&E augmentation."""

__version__ = "0.1.0"

__all__ = ["__version__"]
