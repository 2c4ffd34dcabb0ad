"""vlserve: an offline OpenAI-compatible inference server for Qwen3-VL on llama.cpp.

The whole product is this package: the server and its commands, the chat page (`webui/`,
package data), the demo model's generator and the benchmark (docs/architecture.md)."""

__version__ = "0.1.0"
