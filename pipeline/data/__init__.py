"""Data: sources (Hub, local files, the embedded corpus), tokenizers, packing into blocks."""
