"""symot-med: unpaired modality translation of medical images with SyMOT-Flow."""

__version__ = "0.1.0"
