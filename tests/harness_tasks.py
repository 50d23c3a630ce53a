"""Small lm-evaluation-harness tasks built from local files (nothing downloads): YAML tasks over jsonl
files the tests write, one per kind of request (multiple choice, rolling loglikelihood, generation)."""

import json
from pathlib import Path

JUNK = "qzxjvkqzxjvkqzxj"


def choice_docs(text: str, n: int = 12) -> list[dict]:
    """Lines of real text cut in two: the true second half against junk or another line's second half."""
    lines = [line for line in text.splitlines() if len(line) > 30][:n]
    docs = []
    for i, line in enumerate(lines):
        # every third doc against junk (easy), the others against another line's words (near chance)
        true, other = line[16:26], JUNK[:10] if i % 3 == 0 else lines[(i + 5) % len(lines)][16:26]
        docs.append({"context": line[:16], "choices": [true, other] if i % 2 == 0 else [other, true], "label": i % 2})
    return docs


def write_tasks(directory: Path, text: str) -> tuple[Path, list[dict]]:
    """tiny_choice (multiple_choice, acc), tiny_ppl (loglikelihood_rolling), tiny_gen (generate_until)."""
    directory.mkdir(parents=True, exist_ok=True)
    docs = choice_docs(text)
    (directory / "choice.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    paragraphs = [p for p in text.split("\n\n") if len(p) > 80][:4]
    (directory / "ppl.jsonl").write_text("".join(json.dumps({"text": p}) + "\n" for p in paragraphs))
    (directory / "gen.jsonl").write_text("".join(json.dumps({"q": d["context"], "a": d["choices"][d["label"]]}) + "\n"
                                                 for d in docs[:3]))

    def task(name, data, body):
        (directory / f"{name}.yaml").write_text(
            f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {directory / data}\n"
            f"test_split: test\n{body}")

    task("tiny_choice", "choice.jsonl", "output_type: multiple_choice\ndoc_to_text: context\ndoc_to_choice: choices\n"
         "doc_to_target: label\ntarget_delimiter: \"\"\nmetric_list:\n"
         "  - {metric: acc, aggregation: mean, higher_is_better: true}\n")
    task("tiny_ppl", "ppl.jsonl", "output_type: loglikelihood_rolling\ndoc_to_text: \"\"\ndoc_to_target: text\n"
         "metric_list:\n  - {metric: word_perplexity}\n  - {metric: byte_perplexity}\n  - {metric: bits_per_byte}\n")
    task("tiny_gen", "gen.jsonl", "output_type: generate_until\ndoc_to_text: q\ndoc_to_target: a\n"
         "generation_kwargs: {until: [\"\\n\"], max_gen_toks: 8, do_sample: false}\n"
         "metric_list:\n  - {metric: exact_match, aggregation: mean, higher_is_better: true}\n")
    return directory, docs


def offline_env(env: dict, home: Path) -> dict:
    """What the tests run lm-eval under: no network, caches in `home`."""
    return {**env, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_HOME": str(home)}
