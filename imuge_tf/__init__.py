"""imuge-tf: immunized images that reveal and undo tampering (Imuge, ACM MM 2021)."""

__version__ = "0.1.0"
