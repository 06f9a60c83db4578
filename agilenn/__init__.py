"""AgileNN split inference for extremely weak devices."""

__version__ = "0.1.0"
