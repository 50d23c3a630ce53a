"""gpt-generate: continue a prompt with a trained checkpoint (any parallel layout). Text on stdout only."""

import json
import sys

from gpt.cli import run_command

USAGE = """
usage: gpt-generate checkpoint=<run.dir|checkpoint dir|.../checkpoints/best> prompt="..."
                    [max_new_tokens=N temperature=T top_k=K top_p=P seed=S repetition_penalty=R stop=...]
       gpt-generate checkpoint=... prompt=-                      (the prompt is all of stdin)
       gpt-generate checkpoint=... prompt_file=prompts.txt       (one JSON line per prompt; prompt_file=- reads stdin)

Streams the prompt and its continuation to stdout as tokens come (logs go to stderr);
temperature=0 is greedy. Generation ends at max_new_tokens, the end-of-document token or a stop string.
prompt, stop, checkpoint and prompt_file are taken exactly as typed (`prompt="def fib("`); give
several stop strings as stop=... stop=... .
"""


def _prompts(path: str) -> list[str]:
    """prompt_file's prompts: one per line, or a `prompt` field per line of .jsonl (and of stdin, `-`,
    when its first line is a JSON object)."""
    from pathlib import Path

    from gpt.errors import ConfigError

    if path == "-":
        text, name = sys.stdin.read(), "<stdin>"
        jsonl = text.lstrip().startswith("{")
    else:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"prompt_file={path} does not exist")
        text, name, jsonl = p.read_text(), path, p.suffix == ".jsonl"
    prompts = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if jsonl:
            try:
                prompts.append(json.loads(line)["prompt"])
            except (json.JSONDecodeError, KeyError, TypeError):
                raise ConfigError(f"{name}:{n}: expected a JSON object with a 'prompt' field") from None
        else:
            prompts.append(line)
    return prompts


def complete(loaded, cfg, prompt: str, write=None) -> str:
    """Sample a continuation of `prompt`; `write` receives text as soon as it is stable."""
    import torch

    from gpt.generation.sampling import generate

    tok = loaded.tokenizer
    ids = tok.encode(prompt) if prompt else [tok.eod_id]
    device = next(loaded.model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    new: list[int] = []
    printed = ""
    hold = max((len(s) for s in cfg.stop), default=1) - 1  # a stop string may still be forming at the end
    for token in generate(loaded.model, torch.tensor([ids], device=device), max_new_tokens=cfg.max_new_tokens,
                          vocab_size=loaded.shape.vocab_size, temperature=cfg.temperature, top_k=cfg.top_k,
                          top_p=cfg.top_p, generator=gen, stop_ids=(tok.eod_id,), use_cache=cfg.use_cache,
                          repetition_penalty=cfg.repetition_penalty, window=loaded.context_length):
        new.append(token)
        stable = tok.decode(new).rstrip("\ufffd")  # hold back a multi-byte character until it is complete
        hit = min((stable.find(s) for s in cfg.stop if s and s in stable), default=-1)
        if hit >= 0:
            stable = stable[:hit]
        shown = stable if hit >= 0 else stable[:max(len(printed), len(stable) - hold)]
        if write is not None and len(shown) > len(printed):
            write(shown[len(printed):])
        printed = shown
        if hit >= 0:
            return printed
    text = tok.decode(new)
    if write is not None and len(text) > len(printed):
        write(text[len(printed):])
    return text


def _template(loaded, chat: bool):
    """chat=true: prompt -> the untrained prefix of an instruction record, as the fine-tuning data rendered it."""
    if not chat:
        return lambda prompt: prompt
    from gpt.config.commands import SftConfig
    from gpt.data.sft import prompt_text
    from gpt.errors import ConfigError

    saved = loaded.meta.get("sft_template")
    if saved is None:
        raise ConfigError(f"chat=true: {loaded.checkpoint} was not trained on instruction data (gpt-preprocess "
                          f"format=sft), so it records no template; give the whole prompt instead")
    template = SftConfig(**{k: v for k, v in saved.items() if k in SftConfig.__dataclass_fields__})
    return lambda prompt: prompt_text(prompt, template)


def run(cfg) -> int:
    from dataclasses import replace

    from gpt.config.validate import validate_generate
    from gpt.generation.loading import load_model, release

    validate_generate(cfg)
    prompts = _prompts(cfg.prompt_file) if cfg.prompt_file else None
    if cfg.prompt == "-":  # the whole of stdin, exactly (a trailing newline included)
        cfg = replace(cfg, prompt=sys.stdin.read())
    loaded = load_model(cfg.checkpoint, cfg.device, merge_peft=cfg.merge_peft)
    wrap = _template(loaded, cfg.chat)
    out = sys.stdout
    try:
        if prompts is None:
            out.write(wrap(cfg.prompt))

            def write(text):
                out.write(text)
                out.flush()

            complete(loaded, cfg, wrap(cfg.prompt), write)
            out.write("\n")
        else:
            for prompt in prompts:
                out.write(json.dumps({"prompt": prompt, "completion": complete(loaded, cfg, wrap(prompt))}) + "\n")
                out.flush()
    finally:
        release()
    return 0


def main(argv=None) -> None:
    sys.exit(run_command("gpt-generate", "generate", run, USAGE, argv))


if __name__ == "__main__":
    main()
