"""eval.tasks: lm-evaluation-harness tasks on the training model every eval.tasks_every steps, recorded in
metrics.jsonl and TensorBoard; at tensor parallel 2 the same numbers as one process, and at the last
step the same numbers as evaluating the saved checkpoint in one process."""

import pytest
from harness_tasks import offline_env, write_tasks
from helpers import env_for_subprocess, run_module, tiny_overrides, torchrun

TASKS = ["tiny_choice", "tiny_ppl", "tiny_gen"]


def task_records(run_dir):
    import json

    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in rows if any("/" in k for k in r)}


@pytest.mark.distributed
def test_tasks_during_training_match_one_process_and_the_checkpoint(shards, corpus_file, tmp_path):
    tasks_dir, _ = write_tasks(tmp_path / "tasks", corpus_file.read_text())
    env = offline_env(env_for_subprocess(), tmp_path / "home")

    def args(run, *extra):
        return tiny_overrides(shards, run, f"eval.tasks=[{','.join(TASKS)}]", f"eval.tasks_path={tasks_dir}",
                              "eval.tasks_every=5", "logging.tensorboard=true", "device=cpu", *extra)

    one, tp2 = tmp_path / "one", tmp_path / "tp2"
    run_module("gpt.pretrain", args(one), env=env, check=True)
    torchrun(2, "gpt.pretrain", args(tp2, "parallel.tensor=2"), env=env)
    a, b = task_records(one), task_records(tp2)
    assert sorted(a) == sorted(b) == [5, 10]
    for step in (5, 10):
        assert a[step]["tiny_choice/samples"] == 12 and a[step]["tiny_gen/samples"] == 3
        # tensor parallel 2 splits the vocabulary's softmax over two ranks: fp32 round-off only (~1e-7)
        assert b[step]["tiny_ppl/bits_per_byte"] == pytest.approx(a[step]["tiny_ppl/bits_per_byte"], rel=1e-5)
        for key in ("tiny_choice/acc", "tiny_gen/exact_match"):
            assert b[step][key] == a[step][key], key
    assert a[5]["tiny_ppl/bits_per_byte"] != a[10]["tiny_ppl/bits_per_byte"]  # it evaluated the model it trains

    # The last step's numbers are those of the saved checkpoint, evaluated in one process.
    from gpt.generation import harness
    from gpt.generation.loading import load_model, release

    loaded = load_model(one, "cpu")
    try:
        lm = harness.GptLM(harness.local_backend(loaded), loaded.tokenizer, max_length=loaded.context_length)
        again = harness.evaluate_tasks(lm, TASKS, tasks_path=str(tasks_dir))
    finally:
        release()
    assert again["tiny_ppl/bits_per_byte"] == pytest.approx(a[10]["tiny_ppl/bits_per_byte"], rel=1e-6)
    assert again["tiny_choice/acc"] == a[10]["tiny_choice/acc"]

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(one / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("eval/tiny_ppl/bits_per_byte")] == [5, 10]
    assert "eval/tasks_time_s" in events.Tags()["scalars"]


@pytest.mark.parametrize("overrides, world, message", [
    (["eval.tasks=[hellaswag]", "parallel=pp2"], 2, r"eval\.tasks runs on the training model with parallel\.pipeline=1,"
                                                    r".*\(here pipeline=2, .*gpt-eval checkpoint=<run\.dir> tasks=\[\.\.\.\]"),
    (["eval.tasks=[hellaswag]", "parallel.tensor=2", "parallel.sequence_parallel=true"], 2,
     r"eval\.tasks runs .*sequence_parallel=true\)"),
    (["eval.tasks=[hellaswag]", "eval.tasks_every=0"], 1, r"eval\.tasks_every=0 must be at least 1"),
    (["eval.tasks=[hellaswag]", "eval.tasks_limit=0"], 1, r"eval\.tasks_limit=0\.0 must be positive"),
])
def test_refused_before_anything_starts(overrides, world, message):
    from gpt.config import compose, validate_training
    from gpt.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        validate_training(compose("pretrain", overrides), world_size=world)
