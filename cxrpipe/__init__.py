"""cxrpipe: align a chest X-ray image encoder with a frozen language model's reading of the report."""

__version__ = "0.1.0"
