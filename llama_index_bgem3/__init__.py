"""LlamaIndex adapters for bgem3."""
