"""provision: a private LLM service for coding agents on a Proxmox VE host."""

__version__ = "0.1.0"
