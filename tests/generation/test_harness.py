"""lm-evaluation-harness through gpt-eval: a task built from local files, its accuracy checked against a
hand computation (pretrained and LoRA checkpoints); results recorded in the run on request; and our LM
class gives the same loglikelihoods, rolling loglikelihoods and greedy generations as lm-eval's own
Hugging Face model on the exported checkpoint."""

import json
import random
import shutil

import numpy as np
import pytest
import torch
from harness_tasks import offline_env, write_tasks
from helpers import env_for_subprocess, read_metrics, run_module

LORA = ("peft=lora", "peft.targets=[attn,mlp]")


@pytest.fixture(scope="module")
def tasks(corpus_file, tmp_path_factory):
    return write_tasks(tmp_path_factory.mktemp("tasks"), corpus_file.read_text())


def hand_accuracy(checkpoint, docs) -> float:
    """argmax over choices of sum log p(choice | context), the log-softmax of the model's logits over the
    true vocabulary (no truncation: every context + choice fits the 32-token window)."""
    from gpt.generation.loading import load_model, release

    loaded = load_model(checkpoint, "cpu")
    tok, vocab = loaded.tokenizer, loaded.shape.vocab_size
    try:
        right = 0
        for d in docs:
            scores = []
            for choice in d["choices"]:
                ctx, full = tok.encode(d["context"]), tok.encode(d["context"] + choice)
                assert len(full) <= loaded.context_length + 1
                with torch.no_grad():
                    logp = loaded.model(torch.tensor([full[:-1]]))[0, :, :vocab].float().log_softmax(-1)
                scores.append(sum(float(logp[i - 1, full[i]]) for i in range(len(ctx), len(full))))
            right += int(max(range(len(scores)), key=scores.__getitem__) == d["label"])
        return right / len(docs)
    finally:
        release()


def gpt_eval(checkpoint, tasks_dir, home, *extra):
    proc = run_module("gpt.evaluate", [f"checkpoint={checkpoint}", f"tasks_path={tasks_dir}", "batch_size=3", *extra],
                      env=offline_env(env_for_subprocess(), home), check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("which", ["pretrained", "lora"])
def test_task_accuracy_equals_a_hand_computation(which, base_run, finetune, tasks, tmp_path):
    """gpt-eval tasks=[...] on a pretrained and on a LoRA checkpoint. The pretrained one also runs the rolling
    task with log_to_run=true (on a copy of the run): the record is appended, at the checkpoint's step, to
    its metrics.jsonl, cutting nothing (the run's config has TensorBoard off, so none is written)."""
    tasks_dir, docs = tasks
    if which == "lora":
        run, extra = finetune(1, *LORA)[0], ()
    else:
        run, extra = tmp_path / "run", ("tasks=[tiny_choice,tiny_ppl]", "log_to_run=true")
        shutil.copytree(base_run, run)
    before = (run / "metrics.jsonl").read_text()
    result = gpt_eval(run, tasks_dir, tmp_path / "hf", *(extra or ("tasks=[tiny_choice]",)))
    assert result["tiny_choice/samples"] == len(docs) == 12
    assert result["tiny_choice/acc"] == pytest.approx(hand_accuracy(run, docs), abs=1e-12)
    print(f"{which}: tiny_choice acc {result['tiny_choice/acc']:.4f} over {len(docs)} examples")  # the report's figure
    text = (run / "metrics.jsonl").read_text()
    if which == "lora":
        assert text == before
        return
    assert text.startswith(before) and len(read_metrics(run)[0]) == 10
    record = json.loads(text.splitlines()[-1])
    assert record["step"] == 10 and record["tiny_choice/acc"] == result["tiny_choice/acc"]
    assert record["tiny_ppl/bits_per_byte"] == result["tiny_ppl/bits_per_byte"] > 0
    assert not (run / "tensorboard").exists()


def test_same_numbers_as_lm_evals_hf_model_on_the_export(base_run, corpus_file, tasks, tmp_path, monkeypatch):
    """Our LM class against lm-eval's HFLM over transformers on the gpt-export of the same checkpoint:
    loglikelihood (with empty, long and left-truncated contexts, greedy flags included), rolling
    loglikelihood over several windows, and greedy generate_until. Both are fp32 on CPU; the sums agree
    to ~1e-6 (the same matmuls in another order), so 1e-4 absolute is far from any real difference
    (a wrong token or position moves a sum by >0.1)."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from gpt.generation import harness
    from gpt.generation.loading import load_model, release

    for key, value in offline_env({}, tmp_path / "home").items():
        monkeypatch.setenv(key, value)
    hf_dir = tmp_path / "hf"
    run_module("gpt.export", [f"checkpoint={base_run}", f"output={hf_dir}"], check=True)
    loaded = load_model(base_run, "cpu")
    try:
        window = loaded.context_length
        ours = harness.GptLM(harness.local_backend(loaded), loaded.tokenizer, max_length=window, batch_size=3)
        theirs = HFLM(pretrained=str(hf_dir), device="cpu", batch_size=3, max_length=window)
        text = corpus_file.read_text()
        # the model's own greedy continuation of a prompt: scored as greedy by both
        greedy = ours.generate_until([Instance("generate_until", {}, ("First", {"until": [], "max_gen_toks": 6}), 0)])[0]
        requests = [("To be, or not", " to be"), ("", "First Citizen"), (text[:200], " long context"),
                    ("Hello ", "world"), ("x", "y" * 20), ("First", greedy)]
        ll = [Instance("loglikelihood", {}, r, i) for i, r in enumerate(requests)]
        a, b = ours.loglikelihood(ll), theirs.loglikelihood(ll)
        assert [g for _, g in a] == [g for _, g in b] and a[-1][1] is True
        assert [s for s, _ in a] == pytest.approx([s for s, _ in b], abs=1e-4)
        rolling = [Instance("loglikelihood_rolling", {}, (s,), i) for i, s in enumerate([text[:300], "short"])]
        assert ours.loglikelihood_rolling(rolling) == pytest.approx(theirs.loglikelihood_rolling(rolling), abs=1e-4)
        gen = [Instance("generate_until", {}, (p, {"until": [u], "max_gen_toks": 12}), i)
               for i, (p, u) in enumerate([("First Citizen:\n", "\n\n"), ("ROMEO", ":"), (text[:100], ".")])]
        assert ours.generate_until(gen) == theirs.generate_until(gen)
        # limit: the first N examples of each task; lm-eval seeds python, numpy and torch: put back afterwards
        # (a training run's dropout and data order must not depend on whether it evaluated tasks)
        random.seed(7), np.random.seed(7), torch.manual_seed(7)
        before = (random.random(), np.random.random(), torch.rand(1))
        random.seed(7), np.random.seed(7), torch.manual_seed(7)
        limited = harness.evaluate_tasks(ours, ["tiny_choice", "tiny_gen"], limit=4, tasks_path=str(tasks[0]))
        assert (random.random(), np.random.random(), torch.rand(1)) == before
        assert limited["tiny_choice/samples"] == 4 and limited["tiny_gen/samples"] == 3  # tiny_gen has 3
    finally:
        release()
