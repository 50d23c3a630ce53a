"""Hugging Face interop: our checkpoints -> `transformers` directories (gpt-export) and back
(`model.init_from`). GPT-2 style models become `GPT2LMHeadModel`, Llama style ones `LlamaForCausalLM`.

Modules: `config.py` (config.json <-> ModelConfig), `weights.py` (state-dict names and layouts),
`tokenizer.py` (our tokenizers as fast tokenizers, and back), `files.py` (reading/writing weight
files, safetensors or weights-only torch pickles), `export.py` (a checkpoint -> an HF directory),
`init_from.py` (an HF directory -> the start of a run). No DeepSpeed here: export runs anywhere.
"""
