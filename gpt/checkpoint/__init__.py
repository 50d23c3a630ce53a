"""Layout-free sharded checkpoints (safetensors only; format.py documents the layout on disk).

`save`/`load` (engine side, import DeepSpeed) and `reader` (no DeepSpeed: generation, export) are
imported from their modules.
"""
