"""The host file: schema and loader."""

from .loader import Loaded, load, load_text, read_secret
from .schema import HostFile

__all__ = ["HostFile", "Loaded", "load", "load_text", "read_secret"]
