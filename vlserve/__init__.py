"""vlserve: an offline OpenAI-compatible inference server for Qwen3-VL on llama.cpp."""

__version__ = "0.1.0"
