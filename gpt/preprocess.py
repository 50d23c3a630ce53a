"""gpt-preprocess: turn text into token shards for training (docs/data.md)."""

import sys
from typing import List, Optional

from gpt.cli import run_command
from gpt.config.commands import PreprocessConfig

USAGE = """
usage: gpt-preprocess input=<file|dir|glob|stdlib|[a,b]> output=<dir> [key=value ...]

Writes Arrow token shards, index.arrow and metadata.json into output (atomically). Inputs: .txt .md .py
.jsonl (plain, .gz or .zst), .parquet, datasets saved with save_to_disk, directories, globs. Common keys:
  tokenizer.kind=byte|bpe|hf|tiktoken   tokenizer.vocab_size=8192 tokenizer.train_bytes=1000000000 (bpe)
  tokenizer.path=<tokenizer.json> (hf)  tokenizer.name=gpt2|cl100k_base (tiktoken)
  split=blank_lines|file   text_key=text   workers=N   shard_tokens=64000000   on_error=fail|skip   overwrite=true
Many nodes (sbatch slurm/preprocess.sh ... does this): stage=tokenizer (bpe, once), then
  stage=encode task=I tasks=N for every I (the last one to finish merges), or stage=merge.
"""


def run(cfg: PreprocessConfig) -> int:
    from gpt.data.preprocess import preprocess

    preprocess(cfg)
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    return run_command("gpt-preprocess", "preprocess", run, USAGE, argv)


if __name__ == "__main__":
    sys.exit(main())
