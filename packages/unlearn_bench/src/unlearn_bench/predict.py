"""Answers of a Llava folder to new questions (the ``predict`` command).

Questions come from the command line (one optional image for all of them) or from a
JSON Lines file of ``{"question": str, "image": str?}`` rows, image paths relative
to that file's folder. Each question is asked in the training prompt format
(:func:`unlearn_bench.data.format_prompt`) and answered by greedy decoding with
:func:`unlearn_bench.evaluate.generate_answers`, the decoder the evaluation scores.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medcommon.data import read_jsonl
from medcommon.errors import InputError
from medcommon.fs import write_text_atomic
from medcommon.run import load_run
from medcommon.train.accelerator import resolve_device
from unlearn_bench import PACKAGE
from unlearn_bench.data import Encoder
from unlearn_bench.evaluate import generate_answers
from unlearn_bench.model import check_llava_dir, load_llava


def _image(path: str | Path, where: str | None = None) -> str:
    """The image's absolute path; a missing file is an InputError naming it (and ``where``)."""
    path = Path(path).resolve()
    if not path.is_file():
        if where is None:
            raise InputError(path, "image not found")
        raise InputError(where, f"image not found: {path}")
    return str(path)


def questions_from_args(questions: Sequence[str], image: str | Path | None) -> list[dict[str, Any]]:
    """``[{"question", "image"?}]`` of command-line questions, all with the same image."""
    img = _image(image) if image is not None else None
    rows = []
    for q in questions:
        if not q.strip():
            raise InputError("QUESTION", "empty question")
        rows.append({"question": q} if img is None else {"question": q, "image": img})
    return rows


def read_questions(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a questions file; ``image`` made absolute (relative to the file's folder).

    Other fields of a row (an id, say) are kept and written back beside the answer.
    """
    path = Path(path)
    rows = []
    for row in read_jsonl(path, line_numbers=True):
        where = f"{path}:{row.pop('_line')}"
        q = row.get("question")
        if not isinstance(q, str) or not q.strip():
            raise InputError(where, "needs a non-empty string field 'question'")
        if row.get("image") is not None:
            if not isinstance(row["image"], str):
                raise InputError(where, "'image' must be a path string")
            row["image"] = _image(path.parent / row["image"], where)
        rows.append(row)
    if not rows:
        raise InputError(path, "no questions in this file")
    return rows


def predict_answers(
    model_path: str | Path,
    questions: Sequence[dict[str, Any]],
    *,
    max_new_tokens: int = 50,
    batch_size: int = 16,
    device: str = "auto",
    quiet: bool = True,
) -> list[str]:
    """Greedy answers of the Llava at ``model_path`` (RUN, RUN/model or any Llava folder).

    ``questions`` are rows of :func:`questions_from_args` / :func:`read_questions`;
    a row with ``image`` is asked with that image (``USER: <image>\\n...``).
    """
    if max_new_tokens < 1:
        raise InputError("--max-new-tokens", f"must be >= 1, got {max_new_tokens}")
    model_dir = check_llava_dir(model_path)
    run = model_dir.parent
    if model_dir.name == "model" and (run / "config.json").is_file():
        load_run(run, package=PACKAGE)  # a run folder must be one of this package
    model, processor = load_llava(model_dir, device=resolve_device(device))
    model.eval()
    items = [
        {
            "question": row["question"],
            "modality": "image_text" if row.get("image") else "text_only",
            "image": row.get("image"),
        }
        for row in questions
    ]
    # image paths are absolute, so the Encoder's data folder is never joined onto them
    enc = Encoder(processor, Path.cwd())
    return generate_answers(model, enc, items, max_new_tokens, batch_size, quiet)


def write_answers(out: str | Path, questions: Sequence[dict[str, Any]], answers: Sequence[str]):
    """``out`` as JSON Lines: each question row with its ``answer`` (written atomically)."""
    import json

    lines = [json.dumps({**q, "answer": a}, ensure_ascii=False) for q, a in zip(questions, answers)]
    write_text_atomic(out, "\n".join(lines) + "\n")


def run_predict(
    model_path: str | Path,
    questions: Sequence[str] = (),
    *,
    image: str | Path | None = None,
    questions_file: str | Path | None = None,
    out: str | Path | None = None,
    max_new_tokens: int = 50,
    device: str = "auto",
    quiet: bool = True,
) -> tuple[list[dict[str, Any]], list[str]]:
    """The ``predict`` command: read the questions, answer them, write ``out`` if given.

    Returns ``(rows, answers)``. Every input is checked before the model is loaded.
    """
    if questions_file is not None and questions:
        raise InputError("--questions", "give questions on the command line or in a file, not both")
    if questions_file is not None:
        if image is not None:
            raise InputError("--image", "with --questions, give each row its own 'image'")
        rows = read_questions(questions_file)
    elif questions:
        rows = questions_from_args(questions, image)
    else:
        raise InputError("QUESTION", "no question given (pass QUESTION... or --questions FILE)")
    answers = predict_answers(
        model_path, rows, max_new_tokens=max_new_tokens, device=device, quiet=quiet
    )
    if out is not None:
        write_answers(out, rows, answers)
    return rows, answers
