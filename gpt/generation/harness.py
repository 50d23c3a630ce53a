"""Downstream tasks through lm-evaluation-harness: our model as its LM class.

`GptLM` implements lm-eval's `TemplateLM` (loglikelihood, loglikelihood_rolling, generate_until)
with our tokenizer over a `Backend`: the one-process model of any checkpoint (gpt-eval) or the
training engine's model at any tensor / data / ZeRO layout (eval.tasks in training; every rank runs
the same requests in the same order, so the tensor-parallel and ZeRO-3 collectives of the forward
line up, and only the logging rank records the results).

Importing this module imports lm_eval (seconds): callers import it only when tasks are asked for.

Requests are scored in batches, longest first, right-padded (the model is causal: padding after a
sequence never changes its logits). Log-probabilities are taken over the true vocabulary: the
padding rows of the embedding table take no probability mass.
"""

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from gpt.errors import ConfigError, DataError

try:
    from lm_eval import simple_evaluate
    from lm_eval.api.model import TemplateLM
    from lm_eval.models.utils import Collator
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
except ImportError as e:  # an optional dependency: only tasks need it
    raise ConfigError(f"tasks need lm-evaluation-harness ({e}): pip install 'lm-eval>=0.4.5,<0.5', "
                      f"or pip install -e '.[eval]'") from None
from gpt.generation.scoring import full_vocab_logits, target_logprobs


@dataclass
class Backend:
    """What GptLM runs on: a forward pass returning this tensor rank's vocabulary slice of the logits."""

    forward: Callable[[torch.Tensor], torch.Tensor]  # (b, t) ids -> (b, t, v_local) logits
    vocab_size: int  # the tokenizer's (true) vocabulary; rows past it are padding
    device: torch.device
    tp_rank: int = 0
    tp_group: object = None
    model: object = None  # a one-process GPT: generation uses its KV cache


def local_backend(loaded) -> Backend:
    """The one-process model of a checkpoint (gpt.generation.loading.load_model)."""
    device = next(loaded.model.parameters()).device
    return Backend(forward=loaded.model, vocab_size=loaded.shape.vocab_size, device=device, model=loaded.model)


class GptLM(TemplateLM):
    """lm-eval's view of our model."""

    backend = "causal"

    def __init__(self, model: Backend, tokenizer, *, max_length: int, batch_size: int = 8, max_gen_toks: int = 256):
        super().__init__()
        self.m = model
        self.tok = tokenizer
        self._max_length = max_length
        self.batch_size = batch_size
        self.max_gen_toks = max_gen_toks

    @property
    def eot_token_id(self) -> int:
        return self.tok.eod_id

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def device(self):
        return self.m.device

    def tok_encode(self, string: str, add_special_tokens=None, **kwargs) -> list[int]:
        return self.tok.encode(string)

    def tok_decode(self, ids) -> str:
        return self.tok.decode(ids)

    # ---- scoring
    def _score(self, rows: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """(context ids, continuation ids) per row -> (sum log p(continuation), all greedy), one forward."""
        for _, cont in rows:
            if not 0 < len(cont) <= self.max_length:
                raise DataError(f"a task continuation of {len(cont)} tokens does not fit the model's context of "
                                f"{self.max_length} tokens (the trained train.seq_len)")
        fulls = [(ctx + cont)[-(self.max_length + 1):] for ctx, cont in rows]  # truncated on the left, as lm-eval's HF model
        width = max(len(f) for f in fulls) - 1
        inp = torch.zeros((len(rows), width), dtype=torch.long)
        tgt = torch.zeros((len(rows), width), dtype=torch.long)
        for i, f in enumerate(fulls):
            inp[i, :len(f) - 1] = torch.tensor(f[:-1])
            tgt[i, :len(f) - 1] = torch.tensor(f[1:])
        inp, tgt = inp.to(self.m.device), tgt.to(self.m.device)
        logprob, greedy = target_logprobs(self.m.forward(inp), tgt, vocab_size=self.m.vocab_size,
                                          tp_rank=self.m.tp_rank, tp_group=self.m.tp_group)
        out = []
        for i, (f, (_, cont)) in enumerate(zip(fulls, rows)):
            end = len(f) - 1  # positions [end - len(cont), end) predict the continuation
            span = slice(end - len(cont), end)
            out.append((float(logprob[i, span].sum()), bool(greedy[i, span].all())))
        return out

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs):
        order = Collator(requests, sort_fn=lambda r: (-len(r[1] + r[2]), tuple(r[1] + r[2])))
        results = []
        bar = tqdm(total=len(requests), disable=disable_tqdm, desc="loglikelihood")
        for chunk in order.get_batched(n=self.batch_size):
            scored = self._score([(ctx, cont) for _, ctx, cont in chunk])
            for (key, _, _), answer in zip(chunk, scored):
                if key is not None:
                    self.cache_hook.add_partial("loglikelihood", key, answer)
                results.append(answer)
            bar.update(len(chunk))
        bar.close()
        return order.get_original(results)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        windows, counts = [], []
        for (string,) in [r.args for r in requests]:
            rolling = [make_disjoint_window(w) for w in get_rolling_token_windows(
                token_list=self.tok_encode(string), prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length, context_len=1)]
            windows += [(None, ctx, cont) for ctx, cont in rolling]
            counts.append(len(rolling))
        scores = self._loglikelihood_tokens(windows, disable_tqdm=disable_tqdm)
        out, k = [], 0
        for request, n in zip(requests, counts):
            total = sum(s for s, _ in scores[k:k + n])
            k += n
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
            out.append(total)
        return out

    # ---- generation
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        out = []
        for request in tqdm(requests, disable=disable_tqdm, desc="generate_until"):
            context, kwargs = request.args
            kwargs = dict(kwargs or {})
            until = kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(kwargs.pop("max_gen_toks", self.max_gen_toks))
            temperature = float(kwargs.pop("temperature", 0.0) or 0.0)
            if not kwargs.pop("do_sample", False):
                temperature = 0.0
            text = self._generate(context, until, max_new, temperature)
            self.cache_hook.add_partial("generate_until", request.args, text)
            out.append(text)
        return out

    def _generate(self, context: str, until: list[str], max_new: int, temperature: float) -> str:
        # As lm-eval's HF model: the context keeps its last (max_length - max_new) tokens, so that the
        # prompt and everything generated fit the window together.
        ids = (self.tok_encode(context) if context else [self.eot_token_id])[-max(1, self.max_length - max_new):]
        new: list[int] = []
        generator = torch.Generator(device="cpu").manual_seed(1234)
        for token in self._tokens(ids, max_new, temperature, generator):
            new.append(token)
            text = self.tok_decode(new)
            hits = [text.find(s) for s in until if s and s in text]
            if hits:
                return text[:min(hits)]
        return self.tok_decode(new)

    def _tokens(self, ids: list[int], max_new: int, temperature: float, generator):
        """New token ids one by one (stops at the end-of-document token)."""
        if self.m.model is not None and temperature == 0:  # one process: the KV cache
            from gpt.generation.sampling import generate

            yield from generate(self.m.model, torch.tensor([ids], device=self.m.device), max_new_tokens=max_new,
                                vocab_size=self.m.vocab_size, temperature=0, stop_ids=(self.eot_token_id,),
                                window=self.max_length)
            return
        seq = list(ids)
        for _ in range(max_new):
            window = torch.tensor([seq[-self.max_length:]], device=self.m.device)
            logits = full_vocab_logits(self.m.forward(window)[:, -1], vocab_size=self.m.vocab_size,
                                       tp_group=self.m.tp_group).cpu()
            if temperature == 0:
                token = int(logits.argmax(-1))
            else:
                token = int(torch.multinomial((logits / temperature).softmax(-1), 1, generator=generator))
            if token == self.eot_token_id:
                return
            yield token
            seq.append(token)



# ---- tasks

def task_manager(tasks: list[str], tasks_path: str | None):
    """lm-eval's TaskManager: only `tasks_path` when it defines every task (fast), else the built-in index too."""
    from lm_eval.tasks import TaskManager

    if tasks_path is not None and not Path(tasks_path).exists():
        raise ConfigError(f"tasks_path={tasks_path} does not exist (a directory of lm-eval task YAML files)")
    if tasks_path is not None:
        local = TaskManager(include_path=tasks_path, include_defaults=False)
        if all(t in local.all_tasks or Path(t).is_file() for t in tasks):
            return local
    manager = TaskManager(include_path=tasks_path)
    unknown = [t for t in tasks if t not in manager.all_tasks and not Path(t).is_file()]
    if unknown:
        where = f" or in tasks_path={tasks_path}" if tasks_path else " (tasks_path= adds a directory of task YAML files)"
        raise ConfigError(f"unknown lm-eval task(s) {unknown}: not among lm-eval's {len(manager.all_tasks)} "
                          f"tasks{where}; `lm-eval ls tasks` lists them")
    return manager


def flatten(results: dict) -> dict[str, float]:
    """lm-eval's {"results": {task: {"acc,none": x, ...}}} -> {"task/acc": x, ...} (numbers only)."""
    flat = {}
    for task, metrics in sorted(results.get("results", {}).items()):
        for key, value in metrics.items():
            if "," not in key or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue  # "alias", "sample_len", ...: not metrics; "N/A" stderr
            metric, _, filt = key.partition(",")
            name = metric if filt == "none" else f"{metric}_{filt}"
            flat[f"{task}/{name}"] = float(value)
        samples = results.get("n-samples", {}).get(task, {}).get("effective")
        if samples is not None:
            flat[f"{task}/samples"] = float(samples)
    return flat


def evaluate_tasks(lm, tasks: list[str], *, limit: float | None = None, num_fewshot: int | None = None,
                   tasks_path: str | None = None, manager=None) -> dict[str, float]:
    """Run lm-eval's simple_evaluate on `lm`; the flattened metrics. Leaves every global RNG as it was
    (lm-eval seeds python, numpy and torch), so a training run's dropout and data stay reproducible."""
    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    states = (random.getstate(), np.random.get_state(), torch.random.get_rng_state(),
              torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)
    try:
        results = simple_evaluate(model=lm, tasks=list(tasks), task_manager=manager or task_manager(tasks, tasks_path),
                                  limit=limit, num_fewshot=num_fewshot, log_samples=False, write_out=False,
                                  )
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.random.set_rng_state(states[2])
        if states[3] is not None:
            torch.cuda.set_rng_state_all(states[3])
    return flatten(results or {})
