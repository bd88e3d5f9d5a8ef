"""The data generation pipeline: entities -> facts -> questions -> splits -> files.

Two scenarios (MLLMU-Med, Xu et al. 2025):

- ``privacy``: Faker-made patient profiles (name, birth date, record number, home
  city, phone, insurer, physician, diagnosis), each bound to medical images. The
  forget set holds *all* questions about the forget patients.
- ``incorrectness``: a table of (synthetic) conditions with code, modality,
  finding, organ, treatment and first-line drug. For the forget conditions, wrong
  organ / treatment / drug values are injected into the training set; the forget
  set holds exactly those wrong-fact questions (the rest of a forget condition's
  questions stay in retain).

Each fact becomes three questions (multiple choice with 4 options, free generation,
cloze); image+text and text-only alternate over (field, type) so both appear for
every field.

Training QA and evaluation probes are separate items, as in MLLMU-Bench (which
fine-tunes on free QA pairs and evaluates on classification / generation / cloze
probes written apart): ``forget_train`` and ``retain_train`` hold the questions that
are trained on, worded with the ``train`` templates; ``forget`` and ``retain`` hold the
probes of the same facts, worded with the ``probe`` templates, and are never trained
on. ``test`` holds paraphrased probes (a third wording) on the *other* image of each
forget entity; ``general`` the probes of held-out entities, never trained on. Output:
``<split>.jsonl``, ``entities.jsonl``, ``images/*.png``, ``dataset.json`` and a
dataset card ``README.md``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from medcommon.config import config_to_dict
from medcommon.errors import InputError
from medcommon.fs import atomic_dir
from unlearn_bench import __version__
from unlearn_bench.config import SynthConfig, check_forget_ratio, forget_count
from unlearn_bench.images import (
    FINDINGS,
    MODALITIES,
    identity_params,
    list_user_images,
    load_user_image,
    render,
)

SPLITS = ("forget", "retain", "test", "general")  # evaluation probes
TRAIN_SPLITS = ("forget_train", "retain_train")  # the QA that finetune / unlearn train on
TRAIN_OF = {"forget": "forget_train", "retain": "retain_train"}
# Written with SynthConfig.validation_probes only (issue #23): validation probes of the
# forget / retain facts (to choose an unlearning dose without the test probes) and the
# held-out entities' questions in the training wording (the verbatim membership holdout).
VAL_SPLITS = ("forget_val", "retain_val")
HOLDOUT_TRAIN = "general_train"
EXTRA_SPLITS = (*VAL_SPLITS, HOLDOUT_TRAIN)
# question wordings: training QA, probes, test paraphrases; with issue #23's settings more
# training wordings (SynthConfig.train_wordings, up to 4) and the validation probes
TRAIN_ALT = "-w2"  # the id suffix of a question in the second training wording
# the style and id suffix of each training wording after the first (train_wordings = 2..4)
EXTRA_WORDINGS = (("train_alt", TRAIN_ALT), ("train_w3", "-w3"), ("train_w4", "-w4"))
WORDING_SUFFIXES = tuple(suffix for _, suffix in EXTRA_WORDINGS)
MAX_TRAIN_WORDINGS = 1 + len(EXTRA_WORDINGS)
STYLES = ("train", "probe", "para", "train_alt", "val", "train_w3", "train_w4")
QTYPES = ("mcq", "gen", "cloze")
LETTERS = "ABCD"

INSURERS = ("Aetna", "Cigna", "Humana", "Kaiser", "Medicare", "Medicaid", "Anthem", "Allianz")
DIAGNOSIS = {  # finding -> the diagnosis the privacy scenario states
    "nodule": "lung nodule",
    "cyst": "renal cyst",
    "effusion": "pleural effusion",
    "mass": "liver mass",
    "calcification": "arterial calcification",
    "no finding": "no acute disease",
}
ORGANS = ("lung", "liver", "kidney", "brain", "heart", "pancreas", "spleen", "bone", "colon")
TREATMENTS = (
    "surgery",
    "radiotherapy",
    "chemotherapy",
    "observation",
    "drainage",
    "ablation",
    "dialysis",
    "stenting",
)
SYLLABLES = ("ka", "lo", "mer", "vi", "dan", "tu", "rel", "so", "pha", "nix", "bor", "ze", "qui")


@dataclass(frozen=True)
class Field:
    """One fact of an entity and how questions name it."""

    name: str
    noun: str  # "insurer", "date of birth", ...


PRIVACY_FIELDS = (
    Field("name", "name"),
    Field("birth_date", "date of birth"),
    Field("record_number", "medical record number"),
    Field("city", "home city"),
    Field("phone", "phone number"),
    Field("insurer", "insurer"),
    Field("physician", "attending physician"),
    Field("diagnosis", "diagnosis"),
)
INCORRECT_FIELDS = (
    Field("condition", "name"),
    Field("modality", "imaging modality"),
    Field("finding", "typical finding"),
    Field("organ", "affected organ"),
    Field("treatment", "first-line treatment"),
    Field("drug", "first-line drug"),
)
WRONG_FIELDS = ("organ", "treatment", "drug")  # injected wrong for forget conditions


# ----------------------------------------------------------------------------- entities
def _pseudo_word(rng: np.random.Generator, n: int) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(n))


def make_patients(n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` fictitious patient profiles (Faker, seeded) with their imaging attributes."""
    from faker import Faker

    fake = Faker("en_US")
    fake.seed_instance(seed)
    rng = np.random.default_rng([seed, 1])
    out, names, mrns = [], set(), set()
    while len(out) < n:
        name = f"{fake.first_name()} {fake.last_name()}"
        mrn = f"MRN{fake.numerify('#####')}"
        if name in names or mrn in mrns:
            continue
        names.add(name)
        mrns.add(mrn)
        finding = FINDINGS[int(rng.integers(len(FINDINGS)))]
        out.append(
            {
                "id": f"p{len(out):04d}",
                "name": name,
                "birth_date": fake.date_of_birth(minimum_age=18, maximum_age=90).isoformat(),
                "record_number": mrn,
                "city": fake.city(),
                "phone": fake.numerify("###-####"),
                "insurer": INSURERS[int(rng.integers(len(INSURERS)))],
                "physician": f"Dr. {fake.last_name()}",
                "diagnosis": DIAGNOSIS[finding],
                "modality": MODALITIES[int(rng.integers(len(MODALITIES)))],
                "finding": finding,
                "identity": identity_params(rng),
            }
        )
    return out


def make_conditions(n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` fictitious conditions: a table of (code, modality, finding, organ, treatment, drug)."""
    rng = np.random.default_rng([seed, 2])
    out, names, drugs = [], set(), set()
    while len(out) < n:
        name = _pseudo_word(rng, 2).capitalize() + " syndrome"
        drug = _pseudo_word(rng, 2) + "mab"
        if name in names or drug in drugs:
            continue
        names.add(name)
        drugs.add(drug)
        out.append(
            {
                "id": f"c{len(out):04d}",
                "condition": name,
                "code": f"Q{len(out):02d}.{int(rng.integers(10))}",
                "modality": MODALITIES[int(rng.integers(len(MODALITIES)))],
                "finding": FINDINGS[int(rng.integers(len(FINDINGS)))],
                "organ": ORGANS[int(rng.integers(len(ORGANS)))],
                "treatment": TREATMENTS[int(rng.integers(len(TREATMENTS)))],
                "drug": drug,
                "identity": identity_params(rng),
            }
        )
    return out


def inject_wrong(entity: dict[str, Any], rng: np.random.Generator, pool: list[dict]) -> dict:
    """The wrong versions of ``WRONG_FIELDS`` for one forget condition (always != the truth)."""
    wrong = {}
    for f in WRONG_FIELDS:
        if f == "drug":
            choices = [e["drug"] for e in pool if e["drug"] != entity["drug"]]
        else:
            choices = [v for v in (ORGANS if f == "organ" else TREATMENTS) if v != entity[f]]
        wrong[f] = str(choices[int(rng.integers(len(choices)))])
    return wrong


# ---------------------------------------------------------------------------- questions
def _subject(scenario: str, entity: dict, field: str, image: bool, para: bool) -> str:
    if image:
        thing = "patient" if scenario == "privacy" else "condition"
        return f"the {thing} shown in this scan" if para else f"the {thing} in this image"
    if scenario == "privacy":
        if field == "name":
            return f"the patient with record {entity['record_number']}"
        return f"the patient named {entity['name']}" if para else f"patient {entity['name']}"
    if field == "condition":
        return f"the condition with code {entity['code']}"
    return f"the disorder {entity['condition']}" if para else entity["condition"]


def question_text(scenario: str, entity: dict, f: Field, qtype: str, image: bool, style: str):
    """The question (without MCQ options) for one fact in one of :data:`STYLES`.

    ``train`` words the training QA, ``probe`` the evaluation probes of the same facts,
    ``para`` the test paraphrases (also a paraphrased subject): three disjoint wordings.
    ``train_alt``, ``train_w3`` and ``train_w4`` are the second to fourth training wordings
    and ``val`` the validation probes' wording (issue #23), each disjoint from the others.
    """
    if style not in STYLES:
        raise ValueError(f"style {style!r} is not one of {STYLES}")
    para = style == "para"
    s = _subject(scenario, entity, f.name, image, para)
    if qtype == "cloze":
        if style == "train_alt":
            return f"Fill in: {s} has the {f.noun} ____."
        if style == "train_w3":
            return f"Blank to fill: {s} is recorded with the {f.noun} ____."
        if style == "train_w4":
            return f"Fill the gap: the chart of {s} lists the {f.noun} ____."
        if style == "val":
            return f"Complete: the {f.noun} on file for {s} is ____."
        if para:
            return f"Complete the sentence: for {s}, the {f.noun} is ____."
        if style == "train":
            return f"Fill in: the {f.noun} of {s} is ____."
        return f"Fill in the blank: the {f.noun} of {s} is ____."
    if para:
        return f"Can you tell me the {f.noun} of {s}?"
    if style == "train_alt":
        return f"Name the {f.noun} recorded for {s}."
    if style == "train_w3":
        return f"State the {f.noun} that {s} has."
    if style == "train_w4":
        return f"Give the {f.noun} listed in the chart of {s}."
    if style == "val":
        return f"Which {f.noun} belongs to {s}?"
    if style == "train":
        return f"Tell me the {f.noun} of {s}."
    return f"What is the {f.noun} of {s}?"


def _options(answer: str, pool: list[str], rng: np.random.Generator, must: str | None):
    others = sorted({v for v in pool if v != answer and v != must})
    picks = [others[i] for i in rng.permutation(len(others))[: 3 - (must is not None)]]
    opts = [answer, *([must] if must is not None else []), *picks]
    return [opts[i] for i in rng.permutation(len(opts))]


def make_items(
    scenario: str,
    entity: dict,
    facts: dict[str, str],
    pools: dict[str, list[str]],
    rng: np.random.Generator,
    *,
    split: str,
    image_path: str | None,
    style: str,
    fields: tuple[Field, ...],
    only: tuple[str, ...] | None = None,
    true_facts: dict[str, str] | None = None,
    id_suffix: str = "",
) -> list[dict[str, Any]]:
    """The questions about one entity: 3 types per field, modality alternating over (field, type).

    ``id_suffix`` ends each id (a second wording of questions already in the split)."""
    items = []
    for i, f in enumerate(fields):
        if only is not None and f.name not in only:
            continue
        for t, qtype in enumerate(QTYPES):
            image = image_path is not None and (i + t) % 2 == 0
            answer = facts[f.name]
            truth = (true_facts or facts)[f.name]
            q = question_text(scenario, entity, f, qtype, image, style)
            item: dict[str, Any] = {
                "id": f"{split}-{entity['id']}-{f.name}-{qtype}{id_suffix}",
                "entity": entity["id"],
                "field": f.name,
                "type": qtype,
                "modality": "image_text" if image else "text_only",
                "image": image_path if image else None,
                "question": q,
                "answer": answer,
                "answer_text": answer,
            }
            if qtype == "mcq":
                must = truth if truth != answer else None
                opts = _options(answer, pools[f.name], rng, must)
                letter = LETTERS[opts.index(answer)]
                item["options"] = opts
                item["question"] = q + "".join(f"\n{LETTERS[k]}. {o}" for k, o in enumerate(opts))
                item["answer"] = letter
            if truth != answer:
                item["true_answer"] = truth
            items.append(item)
    return items


# The whole vocabulary of the categorical fields: distractors for retain/general items
# when removing the forget entities' values leaves fewer than three.
VOCABULARY = {
    "insurer": INSURERS,
    "diagnosis": tuple(DIAGNOSIS.values()),
    "modality": MODALITIES,
    "finding": FINDINGS,
    "organ": ORGANS,
    "treatment": TREATMENTS,
}


def clean_pools(
    pools: dict[str, list[str]], entities: list[dict], excluded: set[int]
) -> dict[str, list[str]]:
    """``pools`` without the values that only the ``excluded`` entities hold (per field).

    A categorical field whose cleaned pool has fewer than 4 distinct values is topped up
    from its :data:`VOCABULARY` (still without those values).
    """
    out = {}
    for name, pool in pools.items():
        kept = {str(e[name]) for i, e in enumerate(entities) if i not in excluded}
        only_forget = {str(e[name]) for i, e in enumerate(entities) if i in excluded} - kept
        clean = [v for v in pool if v not in only_forget]
        if len(set(clean)) < len(LETTERS) and name in VOCABULARY:
            clean += [str(v) for v in VOCABULARY[name] if str(v) not in only_forget]
        out[name] = clean
    return out


# ------------------------------------------------------------------------------- writer
def generate(
    out: str | Path,
    scenario: str,
    cfg: SynthConfig,
    seed: int = 0,
    images: str | Path | None = None,
) -> dict[str, Any]:
    """Write a dataset folder; returns its ``dataset.json`` summary. Deterministic per seed."""
    if scenario not in ("privacy", "incorrectness"):
        raise InputError(
            "--scenario", f"unknown scenario {scenario!r}; use privacy or incorrectness"
        )
    if cfg.n_entities < 2 or cfg.n_general < 1:
        raise InputError("n_entities", "need at least 2 training and 1 held-out entity")
    if cfg.images_per_entity < 2:
        raise InputError("images_per_entity", "need 2 images per entity (train + test)")
    check_forget_ratio(cfg.forget_ratio, cfg.n_entities)
    n_total = cfg.n_entities + cfg.n_general
    user_images = None
    if images is not None:
        user_images = list_user_images(Path(images))
        need = n_total * cfg.images_per_entity
        if len(user_images) < need:
            raise InputError(
                images,
                f"{len(user_images)} images, need {need} ({n_total} x {cfg.images_per_entity})",
            )

    privacy = scenario == "privacy"
    entities = make_patients(n_total, seed) if privacy else make_conditions(n_total, seed)
    fields = PRIVACY_FIELDS if privacy else INCORRECT_FIELDS
    rng = np.random.default_rng([seed, 3])
    order = rng.permutation(n_total)
    general_idx = set(order[: cfg.n_general].tolist())
    train_idx = [int(i) for i in order[cfg.n_general :]]
    n_forget = forget_count(cfg.forget_ratio, cfg.n_entities)
    forget_idx = set(train_idx[:n_forget])
    pools = {f.name: [str(e[f.name]) for e in entities] for f in fields}
    if not privacy:  # wrong values appear as options too
        pools["organ"] = list(ORGANS)
        pools["treatment"] = list(TREATMENTS)
    # Retain and general questions never offer a forget entity's own value as a
    # distractor: the retrained model (trained on retain only) would otherwise read the
    # forget patients' private values in its training questions. A value that a kept
    # entity shares (a common insurer, an organ) stays.
    kept_pools = clean_pools(pools, entities, forget_idx)
    # The training questions' distractors: with holdout_clean (issue #23) also without
    # the values only held-out entities hold, which are the membership holdout's; by
    # default as before (the forget questions offer any value, retain the kept ones).
    train_forget_pools, train_retain_pools = pools, kept_pools
    if cfg.holdout_clean:
        train_forget_pools = clean_pools(pools, entities, general_idx)
        train_retain_pools = clean_pools(pools, entities, forget_idx | general_idx)

    if cfg.train_wordings not in range(1, MAX_TRAIN_WORDINGS + 1):
        raise InputError(
            "train_wordings", f"must be 1 to {MAX_TRAIN_WORDINGS}, got {cfg.train_wordings}"
        )
    written = (*SPLITS, *TRAIN_SPLITS, *(EXTRA_SPLITS if cfg.validation_probes else ()))
    splits: dict[str, list[dict]] = {s: [] for s in written}
    records = []
    with atomic_dir(out) as tmp:
        (tmp / "images").mkdir()
        for idx, ent in enumerate(entities):
            role = "general" if idx in general_idx else "forget" if idx in forget_idx else "retain"
            paths = []
            for k in range(cfg.images_per_entity):
                img_rng = np.random.default_rng([seed, 4, idx, k])
                if user_images is not None:
                    arr = load_user_image(
                        user_images[idx * cfg.images_per_entity + k], cfg.image_size
                    )
                else:
                    arr = render(
                        cfg.image_size, ent["modality"], ent["finding"], ent["identity"], img_rng
                    )
                rel = f"images/{ent['id']}_{k}.png"
                Image.fromarray(arr).save(tmp / rel)
                paths.append(rel)
            truth = {f.name: str(ent[f.name]) for f in fields}
            facts = dict(truth)
            wrong = {}
            if role == "forget" and not privacy:
                wrong = inject_wrong(ent, rng, entities)
                facts.update(wrong)
            common = {"fields": fields, "true_facts": truth}

            def add(split, facts_, pools_, image, style, only=None, _ent=ent, _common=common):
                splits[split] += make_items(
                    scenario, _ent, facts_, pools_, rng, split=split, image_path=image,
                    style=style, only=only, **_common,
                )  # fmt: skip

            # Issue #23's additions draw their options from their own generator, so the
            # questions above are the same with them or without.
            extra_rng = np.random.default_rng([seed, 5, idx])

            def add_extra(split, facts_, pools_, style, only=None, suffix="", _ent=ent,
                          _common=common, _image=paths[0], _rng=extra_rng):  # fmt: skip
                splits[split] += make_items(
                    scenario, _ent, facts_, pools_, _rng, split=split, image_path=_image,
                    style=style, only=only, id_suffix=suffix, **_common,
                )  # fmt: skip

            alt = cfg.train_wordings >= 2
            # the third and fourth wordings come after everything else this entity draws,
            # so the datasets with two wordings are the same byte for byte
            more = EXTRA_WORDINGS[1 : cfg.train_wordings - 1]
            val = cfg.validation_probes
            if role == "general":
                add("general", truth, kept_pools, paths[0], "probe")
                if val:  # never trained on: the training wording of unseen entities
                    add_extra(HOLDOUT_TRAIN, truth, kept_pools, "train")
            elif role == "retain":
                add("retain_train", facts, train_retain_pools, paths[0], "train")
                add("retain", facts, kept_pools, paths[0], "probe")
                if alt:
                    add_extra("retain_train", facts, train_retain_pools, "train_alt",
                              suffix=TRAIN_ALT)  # fmt: skip
                if val:
                    add_extra("retain_val", facts, kept_pools, "val")
                for style, suffix in more:
                    add_extra("retain_train", facts, train_retain_pools, style, suffix=suffix)
            else:
                forget_fields = tuple(wrong) if wrong else None
                add("forget_train", facts, train_forget_pools, paths[0], "train", forget_fields)
                add("forget", facts, pools, paths[0], "probe", forget_fields)
                add("test", facts, pools, paths[1], "para", forget_fields)
                if alt:
                    add_extra("forget_train", facts, train_forget_pools, "train_alt",
                              forget_fields, TRAIN_ALT)  # fmt: skip
                if val:
                    add_extra("forget_val", facts, pools, "val", forget_fields)
                if wrong:  # the correct facts of a forget condition stay in retain
                    rest = tuple(f.name for f in fields if f.name not in wrong)
                    add("retain_train", facts, train_retain_pools, paths[0], "train", rest)
                    add("retain", facts, kept_pools, paths[0], "probe", rest)
                    if alt:
                        add_extra("retain_train", facts, train_retain_pools, "train_alt",
                                  rest, TRAIN_ALT)  # fmt: skip
                    if val:
                        add_extra("retain_val", facts, kept_pools, "val", rest)
                for style, suffix in more:
                    add_extra("forget_train", facts, train_forget_pools, style, forget_fields,
                              suffix)  # fmt: skip
                    if wrong:
                        add_extra("retain_train", facts, train_retain_pools, style, rest, suffix)
            rec = {k: v for k, v in ent.items() if k != "identity"}
            rec.update({"role": role, "images": paths})
            if wrong:
                rec["injected_wrong"] = wrong
            records.append(rec)
        for s in written:
            _write_jsonl(tmp / f"{s}.jsonl", splits[s])
        _write_jsonl(tmp / "entities.jsonl", records)
        meta = {
            "package": "unlearn-bench",
            "version": __version__,
            "scenario": scenario,
            "seed": seed,
            "config": config_to_dict(cfg),
            "images": "user folder" if user_images is not None else "medcommon.synthetic",
            "counts": {s: len(splits[s]) for s in SPLITS},
            "train_counts": {s: len(splits[s]) for s in TRAIN_SPLITS},
            **(
                {"extra_counts": {s: len(splits[s]) for s in EXTRA_SPLITS}}
                if cfg.validation_probes
                else {}
            ),
            "entities": {
                "forget": len(forget_idx),
                "retain": cfg.n_entities - len(forget_idx),
                "general": cfg.n_general,
            },
        }
        (tmp / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        (tmp / "README.md").write_text(dataset_card(meta, fields), encoding="utf-8")
    return meta


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def dataset_card(meta: dict[str, Any], fields: tuple[Field, ...]) -> str:
    """The dataset card written as ``OUT/README.md``."""
    c, t, e = meta["counts"], meta["train_counts"], meta["entities"]
    what = (
        "fictitious patient profiles (Faker, seeded) bound to medical images; the forget set is every question about the forget patients"
        if meta["scenario"] == "privacy"
        else "a table of fictitious conditions; wrong organ/treatment/drug values are injected into the training set for the forget conditions, and the forget set is exactly those wrong-fact questions"
    )
    return f"""# unlearn-bench dataset: {meta["scenario"]}

Generated by `unlearn-bench generate` {meta["version"]} with seed {meta["seed"]}, forget ratio
{meta["config"]["forget_ratio"]}. Images: {meta["images"]} ({meta["config"]["image_size"]} px PNG).
Scenario: {what}.

| split | questions | entities | trained on | purpose |
|---|---|---|---|---|
| forget_train | {t["forget_train"]} | {e["forget"]} | yes | the QA of the knowledge to remove (finetune, unlearn) |
| retain_train | {t["retain_train"]} | {e["retain"]} | yes | the QA of the knowledge to keep (finetune, retrain, unlearn) |
| forget | {c["forget"]} | {e["forget"]} | no | probes of the forget facts (other wording than the training QA) |
| retain | {c["retain"]} | {e["retain"]} | no | probes of the retain facts |
| test | {c["test"]} | {e["forget"]} | no | paraphrased questions and the other image of the forget entities |
| general | {c["general"]} | {e["general"]} | no | held-out entities: utility (reading modality/finding) and the membership-inference holdout |

Facts per entity: {", ".join(f.name for f in fields)}. Each fact has a multiple-choice (4 options,
answer = letter), a free-generation and a cloze question; image+text and text-only alternate over
(fact, type). The training QA and the probes are separate items in three wordings (training
"Tell me the ... of ...", probe "What is the ... of ...?", test "Can you tell me the ... of ...?"),
as MLLMU-Bench fine-tunes on QA pairs and evaluates on probes written apart.

Files: `forget_train.jsonl`, `retain_train.jsonl`, `forget.jsonl`, `retain.jsonl`, `test.jsonl`,
`general.jsonl` (one question per line:
`id, entity, field, type (mcq|gen|cloze), modality (image_text|text_only), image (path or null),
question, answer, answer_text, options (mcq), true_answer (when the answer is an injected wrong
fact)`), `entities.jsonl` (the profiles/fact table with `role` and `images`), `images/*.png`,
`dataset.json`.
{_extra_card(meta)}"""


def _extra_card(meta: dict[str, Any]) -> str:
    """The card's paragraph on issue #23's settings; empty when they are off, so the
    default card is as before."""
    cfg = meta["config"]
    parts = []
    wordings = cfg.get("train_wordings", 1)
    if wordings == 2:
        parts.append(
            "Every training question is also asked in a second wording (ids ending in `-w2`, "
            '"Name the ... recorded for ..." / "Fill in: ... has the ... ____.").'
        )
    elif wordings > 2:
        suffixes = ", ".join(f"`{x}`" for x in WORDING_SUFFIXES[: wordings - 1])
        parts.append(
            f"Every training question is also asked in {wordings - 1} more wordings (ids "
            f"ending in {suffixes})."
        )
    if "extra_counts" in meta:
        x = meta["extra_counts"]
        parts.append(
            f"`forget_val.jsonl` ({x['forget_val']}) and `retain_val.jsonl` ({x['retain_val']}) "
            'probe the same facts in a validation wording ("Which ... belongs to ...?"), to '
            f"choose an unlearning dose without the test probes; `general_train.jsonl` "
            f"({x['general_train']}) asks the held-out entities in the training wording, "
            "never trained on: the verbatim membership holdout."
        )
    if cfg.get("holdout_clean"):
        parts.append("No value that only held-out entities hold appears in any training question.")
    return "\n" + " ".join(parts) + "\n" if parts else ""
