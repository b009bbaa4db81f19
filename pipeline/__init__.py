"""A reproducible DVC pipeline: RNN vs. bidirectional RNN text classification."""
