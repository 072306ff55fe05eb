"""cutout: background removal for e-commerce fashion photos, and the ML loop that keeps it good."""

__version__ = "0.1.0"
