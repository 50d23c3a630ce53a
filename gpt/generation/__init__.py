"""Inference: load a checkpoint of any layout into one process, sample with a KV cache."""
