"""LangChain adapters for bgem3."""
