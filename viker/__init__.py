"""viker: make a multimodal LLM forget specific people, while it keeps everything else."""

__version__ = "0.1.0"
