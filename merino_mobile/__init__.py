"""merino-mobile: entropy-driven design of small generative language models for a given device."""

__version__ = "0.1.0"
