"""gpt-generate: continue a prompt with a trained checkpoint (any parallel layout). Text on stdout only."""

import sys

from gpt.cli import run_command

USAGE = """
usage: gpt-generate checkpoint=<run.dir|checkpoint dir> prompt="..." [max_new_tokens=N temperature=T top_k=K top_p=P seed=S]

Prints the prompt and its continuation on stdout (logs go to stderr); temperature=0 is greedy.
"""


def run(cfg) -> int:
    import torch

    from gpt.errors import ConfigError
    from gpt.generation.loading import load_model, release
    from gpt.generation.sampling import generate

    if not cfg.checkpoint:
        raise ConfigError("checkpoint is required: checkpoint=<run.dir or checkpoint dir>")
    if cfg.temperature < 0 or cfg.max_new_tokens < 0:
        raise ConfigError("temperature and max_new_tokens must not be negative")
    loaded = load_model(cfg.checkpoint, cfg.device)
    try:
        tok = loaded.tokenizer
        ids = tok.encode(cfg.prompt) if cfg.prompt else [tok.eod_id]
        prompt = torch.tensor([ids], dtype=torch.long, device=next(loaded.model.parameters()).device)
        gen = torch.Generator(device=prompt.device).manual_seed(cfg.seed)
        out = sys.stdout
        out.write(cfg.prompt)
        new: list[int] = []
        printed = ""
        for token in generate(loaded.model, prompt, max_new_tokens=cfg.max_new_tokens, vocab_size=loaded.shape.vocab_size,
                              temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p, generator=gen,
                              stop_ids=(tok.eod_id,)):
            new.append(token)
            text = tok.decode(new)
            stable = text.rstrip("\ufffd")  # hold back a multi-byte character until it is complete
            out.write(stable[len(printed):])
            out.flush()
            printed = stable
            if cfg.stop and any(s in printed for s in cfg.stop):
                break
        out.write(tok.decode(new)[len(printed):] + "\n")
        out.flush()
    finally:
        release()
    return 0


def main(argv=None) -> None:
    sys.exit(run_command("gpt-generate", "generate", run, USAGE, argv))


if __name__ == "__main__":
    main()
