"""Layout-free sharded checkpoints (safetensors only; format.py documents the layout on disk).

`save`/`load` (engine side: they reach into DeepSpeed's optimizers) and `reader`/`tools` (no
DeepSpeed: generation, export, gpt-checkpoint) are imported from their modules.
"""
