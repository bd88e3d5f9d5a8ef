"""MLLMU-Bench's dataset format (Liu et al. 2025, NAACL; HF ``MLLMMU/MLLMU-Bench``): read and write.

A folder of parquet files, one sub-folder per split (``train-00000-of-00001.parquet``)::

    ft_Data/            fine-tuning QA: ID, image, metadata (JSON list of {Question, Answer})
    forget_{5,10,15}/   probes of the forget profiles
    retain_{95,90,85}/  probes of the retain profiles
    Full_Set/           probes of all fictitious profiles (eval.py draws its few-shot MCQ here)
    Test_Set/           paraphrased probes of every profile, ``images``: transformed images
    Retain_Set/         real-world profiles, never fine-tuned on (utility)

A probe row (the dataset card's features): ``image`` (the Hugging Face Image feature, a
struct ``{bytes, path}``; Test_Set: ``images``, a list of them), ``ID``, ``Directory``
(Full_Set and Retain_Set only), ``biography`` (the profile as a JSON string), ``question``
and ``answer`` (strings), ``Classification_Task`` (a struct of ``Image_Textual_Questions``
and ``Pure_Text_Questions``, lists of ``{Question, Options{A,B,C,D}, Correct_Answer}``),
``Generation_Task`` and ``Mask_Task`` (lists of ``{Type: "Image_Textual" | "Pure_Text",
Question, Ground_Truth}``). Read as their eval.py / finetune.py read them (the schema checked
against those scripts and the dataset card; no code copied); columns they do not read
(``Directory``, ``question``, ``answer``, a ``metadata`` column in ``forget_N``) are
ignored. The card says no more of ``question`` / ``answer`` / ``Directory`` than their
type: :func:`write_mllmu` fills them with the profile's first training QA pair and its ID.

Training QA and probes stay apart, as MLLMU-Bench keeps them: ``forget_train`` /
``retain_train`` come from ``ft_Data``'s QA (split by the IDs of ``forget_N`` /
``retain_M``), the probe subsets from the task columns: ``forget``, ``retain``, ``test``
(Test_Set rows of the forget IDs, as their eval.py filters them) and ``general``
(Retain_Set). What this package adds to a row or a QA pair to restore its own items
exactly (``ID``, ``Field``, ``True_Answer`` in a probe; ``ID``, ``Type``, ``Set``, ... in a
QA pair) are extra keys their scripts do not read.

:func:`dataset_folder` turns an MLLMU-Bench folder given as ``--data`` into a dataset
folder of this package (converted once into a cache), so every command takes either.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medcommon.errors import InputError
from medcommon.fs import atomic_dir
from unlearn_bench import __version__
from unlearn_bench.synth import LETTERS, SPLITS, TRAIN_SPLITS

PARQUET = "train-00000-of-00001.parquet"
PROBE_COLUMNS = ("ID", "Classification_Task", "Generation_Task", "Mask_Task")
TYPE_OF = {"image_text": "Image_Textual", "text_only": "Pure_Text"}
MODALITY_OF = {v: k for k, v in TYPE_OF.items()}
CONVERTER_VERSION = 1  # bump when read_mllmu's mapping changes: cached conversions are redone


@dataclass
class Dataset:
    """A dataset of this package in memory (what a folder written by ``generate`` holds).

    ``splits``: file name (``forget_train``, ..., ``general``) -> question items;
    ``images``: relative path (``images/x.png``) -> encoded image bytes; ``entities``: the
    profiles (``id``, ``role``, ``images``, facts); ``meta``: the ``dataset.json`` summary.
    """

    splits: dict[str, list[dict[str, Any]]]
    images: dict[str, bytes]
    entities: list[dict[str, Any]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------ this package's folders
def load_folder(data_dir: str | Path) -> Dataset:
    """A dataset folder (validated by :func:`unlearn_bench.data.check_dataset`) in memory."""
    from unlearn_bench.data import FILES, check_dataset

    data_dir = Path(data_dir)
    splits = check_dataset(data_dir, FILES)
    entities = (
        _read_jsonl(data_dir / "entities.jsonl") if (data_dir / "entities.jsonl").is_file() else []
    )
    rels = {it["image"] for items in splits.values() for it in items if it.get("image")}
    rels |= {r for e in entities for r in e.get("images", [])}
    images = {}
    for rel in sorted(rels):
        if not (data_dir / rel).is_file():
            raise InputError(data_dir / rel, "image not found")
        images[rel] = (data_dir / rel).read_bytes()
    meta = (
        json.loads((data_dir / "dataset.json").read_text())
        if (data_dir / "dataset.json").is_file()
        else {}
    )
    for it in (it for items in splits.values() for it in items):
        it.pop("_line", None)
    return Dataset(splits, images, entities, meta)


def save_folder(ds: Dataset, out: str | Path) -> Path:
    """Write ``ds`` as a dataset folder of this package (atomically)."""
    out = Path(out)
    with atomic_dir(out) as tmp:
        (tmp / "images").mkdir()
        for rel, data in ds.images.items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_bytes(data)
        for name, items in ds.splits.items():
            (tmp / f"{name}.jsonl").write_text("".join(json.dumps(it) + "\n" for it in items))
        (tmp / "entities.jsonl").write_text("".join(json.dumps(e) + "\n" for e in ds.entities))
        (tmp / "dataset.json").write_text(json.dumps(ds.meta, indent=2) + "\n")
    return out


def _read_jsonl(path: Path) -> list[dict]:
    from medcommon.data import read_jsonl

    return list(read_jsonl(path))


# ------------------------------------------------------------------------------ writing
def _image(ds: Dataset, rel: str | None) -> dict[str, Any] | None:
    if rel is None:
        return None
    return {"bytes": ds.images[rel], "path": Path(rel).name}


def _probe_lists(items: list[dict]) -> dict[str, Any]:
    """The three task columns of one row from its probe items."""
    cls: dict[str, list] = {"Image_Textual_Questions": [], "Pure_Text_Questions": []}
    gen, mask = [], []
    for it in items:
        extra = {"ID": it["id"], "Field": it.get("field"), "True_Answer": it.get("true_answer")}
        kind = TYPE_OF[it["modality"]]
        if it["type"] == "mcq":
            opts = list(it["options"]) + [None] * (len(LETTERS) - len(it["options"]))
            cls[f"{kind}_Questions"].append(
                {
                    "Question": _stem(it["question"]),
                    "Options": dict(zip(LETTERS, opts)),
                    "Correct_Answer": it["answer"],
                    **extra,
                }
            )
        else:
            (gen if it["type"] == "gen" else mask).append(
                {"Type": kind, "Question": it["question"], "Ground_Truth": it["answer"], **extra}
            )
    return {"Classification_Task": cls, "Generation_Task": gen, "Mask_Task": mask}


def _stem(question: str) -> str:
    cut = question.find("\nA. ")
    return question if cut < 0 else question[:cut]


def _by_entity(items: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for it in items:
        out.setdefault(it["entity"], []).append(it)
    return out


def _first_image(items: list[dict], entity: dict | None) -> str | None:
    for it in items:
        if it.get("image"):
            return it["image"]
    return ((entity or {}).get("images") or [None])[0]


def write_mllmu(ds: Dataset, folder: str | Path) -> Path:
    """Write ``ds`` as an MLLMU-Bench folder (atomically); returns ``folder``.

    ``forget_{p}`` / ``retain_{100-p}`` with ``p`` the forget share of the trained
    profiles in percent; ``ft_Data`` holds the training QA, ``Full_Set`` the probes of
    both, ``Test_Set`` the ``test`` probes, ``Retain_Set`` the ``general`` probes.
    """
    pa, pq = _pyarrow()
    ents = {e["id"]: e for e in ds.entities}
    forget_ids = {it["entity"] for it in ds.splits.get("forget_train", [])}
    retain_only = {it["entity"] for it in ds.splits.get("retain_train", [])} - forget_ids
    if not forget_ids or not retain_only:
        raise InputError("dataset", "needs forget_train and retain_train questions to export")
    pct = round(100 * len(forget_ids) / (len(forget_ids) + len(retain_only)))
    pct = min(max(pct, 1), 99)

    train = [(name, it) for name in TRAIN_SPLITS for it in ds.splits.get(name, [])]
    first_qa = {}
    for _, it in train:
        first_qa.setdefault(it["entity"], (it["question"], it["answer"]))

    def card_columns(eid: str, directory: bool = False) -> dict[str, Any]:
        """The card's string columns that eval.py does not read (see the module docstring)."""
        question, answer = first_qa.get(eid, ("", ""))
        cols = {"Directory": eid} if directory else {}
        biography = json.dumps(ents.get(eid, {"id": eid}))
        return {**cols, "biography": biography, "question": question, "answer": answer}

    def probe_rows(items: list[dict], directory: bool = False) -> list[dict]:
        rows = []
        for eid, group in _by_entity(items).items():
            img = _image(ds, _first_image(group, ents.get(eid)))
            rows.append(
                {"image": img, "ID": eid, **card_columns(eid, directory), **_probe_lists(group)}
            )
        return rows

    def test_rows(items: list[dict]) -> list[dict]:
        """A Test_Set row per profile, as theirs (eval.py keeps the forget IDs' rows): the
        other image of a profile without test probes rides along with no questions."""
        groups = _by_entity(items)
        rows = []
        for eid in [*ents, *(g for g in groups if g not in ents)]:
            group = groups.get(eid, [])
            own = ents.get(eid, {}).get("images", [])
            rel = _first_image(group, None) or (own[1:] or own[:1] or [None])[0]
            if rel is None:
                continue
            row = {"images": [_image(ds, rel)], "ID": eid, **card_columns(eid)}
            rows.append({**row, **_probe_lists(group)})
        return rows

    ft_rows = []
    for eid, group in _by_entity([it for _, it in train]).items():
        qa = [_qa_pair(it, name) for name, it in train if it["entity"] == eid]
        img = _image(ds, _first_image(group, ents.get(eid)))
        ft_rows.append({"image": img, "ID": eid, "metadata": json.dumps(qa)})
    tables = {
        "ft_Data": ft_rows,
        f"forget_{pct}": probe_rows(ds.splits.get("forget", [])),
        f"retain_{100 - pct}": probe_rows(ds.splits.get("retain", [])),
        # every fictitious (trained) profile: eval.py's few-shot MCQ source
        "Full_Set": probe_rows(ds.splits.get("forget", []) + ds.splits.get("retain", []), True),
        "Test_Set": test_rows(ds.splits.get("test", [])),
        "Retain_Set": probe_rows(ds.splits.get("general", []), directory=True),
    }
    folder = Path(folder)
    with atomic_dir(folder) as tmp:
        for sub, rows in tables.items():
            if not rows:
                continue
            (tmp / sub).mkdir()
            pq.write_table(_table(pa, rows), tmp / sub / PARQUET)
    return folder


def _qa_pair(it: dict, split: str) -> dict[str, Any]:
    """A training item as MLLMU-Bench's ``{Question, Answer}`` plus this package's keys."""
    qa = {"Question": it["question"], "Answer": it["answer"]}
    qa.update(
        {"ID": it["id"], "Set": split.removesuffix("_train"), "Type": TYPE_OF[it["modality"]]}
    )
    qa.update({"Kind": it["type"], "Field": it.get("field"), "Answer_Text": it.get("answer_text")})
    for key, name in (("options", "Options"), ("true_answer", "True_Answer")):
        if key in it:
            qa[name] = it[key]
    return qa


def _table(pa, rows: list[dict]):
    """A pyarrow table of ``rows`` whose schema tells ``datasets`` the image columns."""
    table = pa.Table.from_pylist(rows)
    features = {f.name: _feature(pa, f.type, f.name) for f in table.schema}
    meta = {b"huggingface": json.dumps({"info": {"features": features}}).encode()}
    return table.replace_schema_metadata(meta)


def _feature(pa, tp, name: str) -> Any:
    """The ``datasets`` feature description of an arrow type (lists in the ``[x]`` form)."""
    if name in ("image", "images") and pa.types.is_struct(tp):
        return {"_type": "Image"}
    if pa.types.is_struct(tp):
        return {f.name: _feature(pa, f.type, f.name) for f in tp}
    if pa.types.is_list(tp) or pa.types.is_large_list(tp):
        return [_feature(pa, tp.value_type, "images" if name == "images" else "")]
    if pa.types.is_null(tp):
        return {"dtype": "null", "_type": "Value"}
    return {"dtype": "string" if pa.types.is_string(tp) else str(tp), "_type": "Value"}


def _pyarrow():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError(
            "--data", "MLLMU-Bench parquet needs pyarrow: pip install pyarrow"
        ) from None
    return pa, pq


# ------------------------------------------------------------------------------ reading
def is_mllmu(path: str | Path) -> bool:
    """Whether ``path`` is an MLLMU-Bench folder (or one of its ``forget_N`` folders) or parquet."""
    path = Path(path)
    if path.suffix == ".parquet":
        return path.is_file()
    root = path.parent if re.fullmatch(r"forget_\d+", path.name) else path
    return root.is_dir() and any(root.glob("forget_*/*.parquet"))


def _split_folders(path: Path) -> tuple[Path, int]:
    """``(root, forget percent)`` of an MLLMU-Bench folder, or of one of its forget_N folders."""
    m = re.fullmatch(r"forget_(\d+)", path.name)
    if m:
        return path.parent, int(m.group(1))
    found = sorted(
        int(p.name[7:]) for p in path.glob("forget_*") if re.fullmatch(r"forget_\d+", p.name)
    )
    if not found:
        raise InputError(path, "no forget_N folder: not an MLLMU-Bench folder")
    if len(found) > 1:
        choices = ", ".join(str(path / f"forget_{n}") for n in found)
        raise InputError(path, f"holds several forget splits; pass one of {choices}")
    return path, found[0]


def _read_table(path: Path, required: tuple[str, ...]) -> list[dict[str, Any]]:
    """Rows of one parquet file or of every parquet file of a folder; checks the columns."""
    _, pq = _pyarrow()
    files = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
    if not files:
        raise InputError(path, "no parquet file")
    rows = []
    for f in files:
        try:
            table = pq.read_table(f)
        except Exception as exc:  # pyarrow raises several types for a bad file
            raise InputError(f, f"cannot read parquet ({type(exc).__name__}: {exc})") from None
        missing = [c for c in required if c not in table.column_names]
        if missing:
            raise InputError(f, f"missing column(s) {', '.join(missing)}")
        rows += [{**r, "_file": f} for r in table.to_pylist()]
    return rows


def _row_image(row: dict) -> dict | None:
    img = row.get("image")
    if img is None and row.get("images"):
        img = row["images"][0]  # Test_Set: transformed images; the first one is used
    return img


class _Images:
    """Collects the images of the rows: ``images/<name>`` per distinct content."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.by_entity: dict[str, list[str]] = {}

    def add(self, row: dict, where: Any) -> str | None:
        img = _row_image(row)
        if img is None:
            return None
        data = img.get("bytes") if isinstance(img, dict) else None
        if not data:
            raise InputError(where, f"row {row['ID']}: image without bytes")
        name = Path(str(img.get("path") or "")).name
        if not re.fullmatch(r"[\w.-]+\.(png|jpe?g|webp|bmp)", name, re.IGNORECASE):
            name = f"{row['ID']}_{hashlib.sha256(data).hexdigest()[:8]}.{_image_ext(data, where)}"
        rel = f"images/{name}"
        if rel in self.files and self.files[rel] != data:
            rel = f"images/{Path(name).stem}_{hashlib.sha256(data).hexdigest()[:8]}{Path(name).suffix}"
        self.files[rel] = data
        seen = self.by_entity.setdefault(str(row["ID"]), [])
        if rel not in seen:
            seen.append(rel)
        return rel


def _image_ext(data: bytes, where: Any) -> str:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            return (im.format or "png").lower().replace("jpeg", "jpg")
    except (OSError, ValueError) as exc:
        raise InputError(where, f"cannot read an image ({exc})") from None


def _probes(row: dict, split: str, image: str | None, where: Any) -> list[dict[str, Any]]:
    """This package's items from one row's task columns."""
    eid = str(row["ID"])
    out = []

    def item(k: int, kind: str, qtype: str, q: dict, question: str, answer: str) -> dict:
        modality = MODALITY_OF.get(kind)
        if modality is None:
            raise InputError(where, f"row {eid}: Type {kind!r} is not Image_Textual or Pure_Text")
        if modality == "image_text" and image is None:
            raise InputError(where, f"row {eid}: an Image_Textual question needs the row's image")
        it = {
            "id": str(q.get("ID") or f"{split}-{eid}-{qtype}-{k}"),
            "entity": eid,
            "field": q.get("Field"),
            "type": qtype,
            "modality": modality,
            "image": image if modality == "image_text" else None,
            "question": question,
            "answer": answer,
            "answer_text": answer,
        }
        if q.get("True_Answer") is not None:
            it["true_answer"] = str(q["True_Answer"])
        return it

    cls = row.get("Classification_Task") or {}
    for kind in ("Image_Textual", "Pure_Text"):
        for k, q in enumerate(cls.get(f"{kind}_Questions") or []):
            options = q.get("Options") or {}
            opts = [options[x] for x in LETTERS if options.get(x) is not None]
            letter = str(q.get("Correct_Answer", "")).strip()[:1].upper()
            if letter not in LETTERS[: len(opts)]:
                raise InputError(
                    where, f"row {eid}: Correct_Answer {q.get('Correct_Answer')!r} is not an option"
                )
            question = q["Question"] + "".join(f"\n{LETTERS[j]}. {o}" for j, o in enumerate(opts))
            it = item(k, kind, "mcq", q, question, letter)
            it["options"] = opts
            it["answer_text"] = opts[LETTERS.index(letter)]
            out.append(it)
    for col, qtype in (("Generation_Task", "gen"), ("Mask_Task", "cloze")):
        for k, q in enumerate(row.get(col) or []):
            out.append(item(k, q.get("Type", ""), qtype, q, q["Question"], str(q["Ground_Truth"])))
    return out


def _training(row: dict, qa_list: list[dict], image: str | None, where: Any) -> list[dict]:
    """The training QA of one ``ft_Data`` row (MLLMU-Bench attaches the image to every pair)."""
    eid = str(row["ID"])
    out = []
    for k, qa in enumerate(qa_list):
        if not isinstance(qa, dict) or "Question" not in qa or "Answer" not in qa:
            raise InputError(where, f"row {eid}: metadata entry {k} lacks Question/Answer")
        modality = MODALITY_OF.get(qa.get("Type", "Image_Textual"), "image_text")
        if image is None:
            modality = "text_only"
        it = {
            "id": str(qa.get("ID") or f"ft-{eid}-{k}"),
            "entity": eid,
            "field": qa.get("Field"),
            "type": qa.get("Kind", "gen"),
            "modality": modality,
            "image": image if modality == "image_text" else None,
            "question": qa["Question"],
            "answer": str(qa["Answer"]),
            "answer_text": qa.get("Answer_Text") or str(qa["Answer"]),
        }
        if qa.get("Options") is not None:
            it["options"] = qa["Options"]
        if qa.get("True_Answer") is not None:
            it["true_answer"] = str(qa["True_Answer"])
        out.append({**it, "_set": qa.get("Set")})
    return out


def read_mllmu(path: str | Path) -> Dataset:
    """An MLLMU-Bench folder (or its ``forget_N`` folder, or one ft_Data parquet) as a :class:`Dataset`.

    With several ``forget_N`` folders, pass the one to use. A bad file or a missing
    column is an :class:`InputError` naming the file.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, "not found")
    if path.suffix == ".parquet":  # one file: its QA (ft_Data) or probes, all "retain"
        return _read_single(path)
    root, pct = _split_folders(path)
    forget_dir, retain_dir = root / f"forget_{pct}", root / f"retain_{100 - pct}"
    if not retain_dir.is_dir():
        raise InputError(retain_dir, "retain folder not found (forget_N needs retain_{100-N})")
    imgs = _Images()
    ents: dict[str, dict] = {}
    splits: dict[str, list[dict]] = {s: [] for s in (*TRAIN_SPLITS, *SPLITS)}

    def probe_split(folder: Path, split: str, keep: set[str] | None = None) -> set[str]:
        ids = set()
        for row in _read_table(folder, PROBE_COLUMNS):
            eid = str(row["ID"])
            rel = imgs.add(row, row["_file"])
            if keep is not None and eid not in keep:
                continue
            ids.add(eid)
            splits[split] += _probes(row, split, rel, row["_file"])
            if eid not in ents:
                ents[eid] = _entity(row)
        return ids

    forget_ids = probe_split(forget_dir, "forget")
    retain_ids = probe_split(retain_dir, "retain")
    if (root / "Test_Set").is_dir():
        probe_split(root / "Test_Set", "test", keep=forget_ids)
    if (root / "Retain_Set").is_dir():
        probe_split(root / "Retain_Set", "general")
    ft_dir = root / "ft_Data"
    if not ft_dir.is_dir():
        raise InputError(ft_dir, "no fine-tuning QA (ft_Data) beside the probes")
    for row in _read_table(ft_dir, ("ID", "image", "metadata")):
        eid, where = str(row["ID"]), row["_file"]
        rel = imgs.add(row, where)
        for it in _training(row, _metadata(row, where), rel, where):
            target = it.pop("_set") or (
                "forget" if eid in forget_ids else "retain" if eid in retain_ids else None
            )
            if target in ("forget", "retain"):
                splits[f"{target}_train"].append(it)
    for s in TRAIN_SPLITS:
        if not splits[s]:
            raise InputError(ft_dir, f"no training QA for {s.removesuffix('_train')} profiles")
    for eid, e in ents.items():
        e["role"] = "forget" if eid in forget_ids else "retain" if eid in retain_ids else "general"
        # the profile's own list (this package's export) where its images came along; an
        # image that no question uses is not exported
        own = [r for r in e.get("images") or [] if isinstance(r, str) and r in imgs.files]
        e["images"] = own or imgs.by_entity.get(eid, [])
    splits = {k: v for k, v in splits.items() if v}
    meta = _meta(root, pct, splits, ents)
    return Dataset(splits, imgs.files, list(ents.values()), meta)


def _read_single(path: Path) -> Dataset:
    rows = _read_table(path, ("ID",))
    imgs = _Images()
    splits: dict[str, list[dict]] = {"retain_train": [], "retain": []}
    ents = {}
    for row in rows:
        rel = imgs.add(row, path)
        if "metadata" in row:
            splits["retain_train"] += [
                {k: v for k, v in it.items() if k != "_set"}
                for it in _training(row, _metadata(row, path), rel, path)
            ]
        if all(c in row for c in PROBE_COLUMNS[1:]):
            splits["retain"] += _probes(row, "retain", rel, path)
            ents.setdefault(str(row["ID"]), _entity(row))
    if not any(splits.values()):
        raise InputError(path, "neither metadata (QA) nor the task columns")
    splits = {k: v for k, v in splits.items() if v}
    return Dataset(splits, imgs.files, list(ents.values()), _meta(path, None, splits, ents))


def _metadata(row: dict, where: Any) -> list[dict]:
    raw = row.get("metadata")
    try:
        qa = json.loads(raw) if isinstance(raw, (str, bytes)) else raw
    except json.JSONDecodeError as exc:
        raise InputError(where, f"row {row['ID']}: metadata is not JSON ({exc})") from None
    if not isinstance(qa, list):
        raise InputError(where, f"row {row['ID']}: metadata is not a list of QA pairs")
    return qa


def _entity(row: dict) -> dict[str, Any]:
    raw = row.get("biography") or row.get("metadata")
    try:
        prof = json.loads(raw) if isinstance(raw, str) else dict(raw or {})
    except (json.JSONDecodeError, TypeError, ValueError):
        prof = {"biography": raw}
    if not isinstance(prof, dict):
        prof = {"biography": prof}
    return {**prof, "id": str(row["ID"])}


def _meta(root: Path, pct: int | None, splits: dict, ents: dict) -> dict[str, Any]:
    return {
        "package": "unlearn-bench",
        "version": __version__,
        "scenario": "mllmu",
        "source": str(Path(root).resolve()),
        "forget_percent": pct,
        "counts": {s: len(splits.get(s, [])) for s in SPLITS},
        "train_counts": {s: len(splits.get(s, [])) for s in TRAIN_SPLITS},
        "entities": {
            r: sum(e.get("role") == r for e in ents.values())
            for r in ("forget", "retain", "general")
        },
    }


# ------------------------------------------------------------------------- the CLI's --data
def cache_root() -> Path:
    """Where converted MLLMU-Bench folders go: ``$UNLEARN_BENCH_CACHE`` or ``~/.cache/unlearn_bench``."""
    env = os.environ.get("UNLEARN_BENCH_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "unlearn_bench"


def dataset_folder(path: str | Path) -> Path:
    """``path`` if it is a dataset folder of this package; an MLLMU-Bench folder converted.

    The conversion is written once per content (the parquet files' names, sizes and
    modification times, and :data:`CONVERTER_VERSION`) under :func:`cache_root`.
    """
    path = Path(path)
    if not is_mllmu(path):
        return path
    files = sorted(path.rglob("*.parquet")) if path.is_dir() else [path]
    if re.fullmatch(r"forget_\d+", path.name):
        files = sorted(path.parent.rglob("*.parquet"))
    h = hashlib.sha256(f"{path.resolve()}|{CONVERTER_VERSION}".encode())
    for f in files:
        st = f.stat()
        h.update(f"{f}|{st.st_size}|{st.st_mtime_ns}".encode())
    out = cache_root() / f"mllmu-{h.hexdigest()[:16]}"
    if not (out / "dataset.json").is_file():
        save_folder(read_mllmu(path), out)
    return out
