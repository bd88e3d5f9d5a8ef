"""Issue #20 in unlearn-bench: existing runs are never lost, bad values are never accepted
silently, nothing is unpickled.

- a run into a finished, evaluated run is refused; ``--overwrite`` replaces the whole old
  run (its ``eval-*.json`` included) once the new one has finished; a run that diverges
  leaves an existing run bit-identical, with ``--overwrite`` and without;
- the final weights are checked (medcommon's ``Diverged``, also on the FSDP save path);
- JSON Lines fields of the wrong type are refused, naming file, line and field;
- a ``--model`` folder with pickled weights is refused before anything is read, and a
  folder holding both safetensors and a pickle is read from the safetensors only.
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from medcommon.cli import run_main
from medcommon.errors import Diverged, InputError
from medcommon.run import load_run
from unlearn_bench.cli import main
from unlearn_bench.data import read_split

FAST = ["--quiet", "--device", "cpu", "--set", "epochs=0.06", "--set", "batch_size=8"]
EVAL = ["--quiet", "--device", "cpu", "--set", "max_new_tokens=2", "--set", "max_items=6"]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture
def evaluated(tmp_path, tiny_data, tiny_run) -> Path:
    """A finished, evaluated finetune run (a copy of the session's vanilla run)."""
    run = shutil.copytree(tiny_run, tmp_path / "evaluated")
    argv = ["evaluate", "--run", run, "--data", tiny_data, "--split", "forget", *EVAL]
    assert main([str(a) for a in argv]) == 0
    assert (run / "eval-forget.json").is_file()
    return run


def _run(argv, capsys):
    code = run_main(main, [str(a) for a in argv])
    return code, capsys.readouterr().err


# ----------------------------------------------------------------- existing run folders
def test_overwrite_replaces_an_evaluated_run_as_a_whole(evaluated, tiny_data, capsys):
    argv = ["finetune", "--data", tiny_data, "--out", evaluated, *FAST, "--seed", "3"]
    code, err = _run(argv, capsys)
    assert code == 2 and "already exists and is not empty" in err
    assert (evaluated / "eval-forget.json").is_file() and load_run(evaluated).info.seed == 0
    code, err = _run([*argv, "--overwrite"], capsys)
    assert code == 0, err
    assert load_run(evaluated).info.seed == 3
    # the old run's results went with it: no stale eval beside the new model
    assert sorted(p.name for p in evaluated.iterdir()) == [
        "checkpoint", "config.json", "log.jsonl", "metrics.json", "model",
    ]  # fmt: skip
    assert sorted(p.name for p in evaluated.parent.iterdir()) == ["evaluated"]


@pytest.mark.parametrize("overwrite", [False, True], ids=["plain run", "--overwrite"])
def test_a_diverging_run_leaves_an_existing_run_bit_identical(
    overwrite, evaluated, tiny_data, tiny_run, capsys
):
    before = _snapshot(evaluated)
    argv = ["unlearn", "--model", tiny_run, "--data", tiny_data, "--out", evaluated,
            "--method", "ga", "--quiet", "--device", "cpu", "--set", "lr=1e30"]  # fmt: skip
    code, err = _run([*argv, "--overwrite"] if overwrite else argv, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert ("diverged: loss is nan" if overwrite else "already exists and is not empty") in err
    assert _snapshot(evaluated) == before
    assert sorted(p.name for p in evaluated.parent.iterdir()) == ["evaluated"]


def test_non_finite_final_weights_leave_nothing(tiny_data, tiny_run, tmp_path, capsys, monkeypatch):
    """A finite last loss with a non-finite weight: medcommon's Diverged from the final check,
    raised inside run.writing(), so the new run's folder is removed."""
    import unlearn_bench.train as train

    check = train.check_finite

    def poisoned(model, step):
        next(p for p in model.parameters() if p.requires_grad).data[0] = float("inf")
        check(model, step)

    monkeypatch.setattr(train, "check_finite", poisoned)
    out = tmp_path / "run"
    argv = ["unlearn", "--model", tiny_run, "--data", tiny_data, "--out", out, "--method",
            "ga", "--quiet", "--device", "cpu"]  # fmt: skip
    code, err = _run(argv, capsys)
    assert code == 2 and "error: training: diverged: weight " in err
    assert "is not finite after step 6" in err  # 48 forget questions at batch 8
    assert not out.exists()


def test_fsdp_save_path_raises_medcommon_diverged():
    """_finish_fsdp: rank 0's gathered state holds a NaN -> Diverged on every process."""
    from unlearn_bench.train import _finish_fsdp

    class Accelerator:
        is_main_process, device = True, torch.device("cpu")

        def get_state_dict(self, model):
            return {"llava.a": torch.ones(2), "llava.b": torch.tensor([1.0, float("nan")])}

        def reduce(self, tensor, reduction):
            return tensor

        def wait_for_everyone(self):
            raise AssertionError("reached the save")

    trainer = SimpleNamespace(accelerator=Accelerator(), model=None)
    with pytest.raises(Diverged, match="weight b is not finite after step 7"):
        _finish_fsdp(trainer, None, None, None, {"steps": 7}, torch.float32)


# ------------------------------------------------------------------- JSON Lines types
@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        ("answer", 42, "field 'answer' must be a string, got 42"),
        ("question", None, "field 'question' must be a string, got null"),
        ("id", 7, "field 'id' must be a string, got 7"),
        ("type", ["gen"], "field 'type' must be a string, got [\"gen\"]"),
        ("answer_text", 1.5, "field 'answer_text' must be a string, got 1.5"),
        ("image", {"p": "x.png"}, 'field \'image\' must be a string or null, got {"p": "x.png"}'),
        ("entity", 3, "field 'entity' must be a string or null, got 3"),
        ("options", ["A", 2], "field 'options' must be a list of strings, got [\"A\", 2]"),
    ],
)
def test_jsonl_fields_are_type_checked(field, value, problem, tiny_data, tmp_path):
    data = shutil.copytree(tiny_data, tmp_path / "d")
    path = data / "forget.jsonl"
    rows = path.read_text().splitlines()
    row = json.loads(rows[0])  # an mcq row with an image and options
    row[field] = value
    rows[0] = json.dumps(row)
    path.write_text("\n".join(rows) + "\n")
    with pytest.raises(InputError) as exc:
        read_split(data, "forget")
    assert str(exc.value) == f"{path}:1: {problem}"


def test_valid_rows_keep_their_values(tiny_data):
    items = read_split(tiny_data, "forget")
    assert all(isinstance(it["answer"], str) for it in items)


# --------------------------------------------------------------------------- pickles
class _Pwned:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "unpickled"))


def test_a_pickle_beside_safetensors_is_never_read(tiny_run, tmp_path):
    """A folder holding both (e.g. training_args.bin beside model.safetensors) is read from
    the safetensors only; a folder holding the pickle alone is refused."""
    from unlearn_bench.model import check_llava_dir, load_llava

    folder = shutil.copytree(tiny_run / "model", tmp_path / "both")
    marker = tmp_path / "pwned"
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(_Pwned(marker)))
    model, _ = load_llava(folder)
    assert torch.isfinite(next(model.parameters())).all() and not marker.exists()
    (folder / "model.safetensors").unlink()
    with pytest.raises(InputError, match="pytorch_model.bin: pickled weights are never loaded"):
        check_llava_dir(folder)
    assert not marker.exists()


def test_pickled_adapter_is_refused(tiny_run, tmp_path):
    from unlearn_bench.model import check_llava_dir

    folder = tmp_path / "adapter"
    folder.mkdir()
    base = str((tiny_run / "model").resolve())
    (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": base}))
    (folder / "adapter_model.bin").write_bytes(pickle.dumps(_Pwned(tmp_path / "pwned")))
    with pytest.raises(InputError, match="adapter_model.bin: pickled weights are never loaded"):
        check_llava_dir(folder)
