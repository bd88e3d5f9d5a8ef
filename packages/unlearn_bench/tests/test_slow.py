"""The effect on small synthetic data: the vanilla model memorises, NPO forgets, retain survives.

Since issue #13 the evaluation probes are worded apart from the QA pairs the model is
trained (and unlearned) on, as in MLLMU-Bench. The thresholds were set when the two
were the same items; each is kept on the quantity it was set for: the answer NLL
rise (x2) on the forget QA that NPO trains on, the knowledge-score drop (x0.5) and
retain knowledge (x0.8) on the probes. Measured when the probes were separated: the
forget-probe NLL rose 0.794 -> 1.281 (x1.61), which this test does not assert on.
"""

from __future__ import annotations

import pytest

from unlearn_bench.config import EvalConfig, SynthConfig
from unlearn_bench.data import Encoder, check_dataset, read_split
from unlearn_bench.evaluate import answer_scores, evaluate_model
from unlearn_bench.model import load_llava
from unlearn_bench.synth import generate
from unlearn_bench.train import finetune, run_spec, unlearn
from unlearn_bench.ues import knowledge_score


@pytest.mark.slow
def test_vanilla_memorises_and_npo_forgets(tmp_path):
    data_dir = tmp_path / "data"
    generate(
        data_dir,
        "privacy",
        SynthConfig(n_entities=10, n_general=2, image_size=32, forget_ratio=0.2),
        seed=0,
    )
    data = check_dataset(data_dir)
    ecfg = EvalConfig(max_new_tokens=12, batch_size=64)
    run = {"seed": 0, "device": "cpu", "quiet": True}
    # the paper's config (the full preset) with lr 3e-3, 40 epochs at batch 16
    fsets = ("lr=3e-3", "epochs=40.0", "batch_size=16")
    finetune(
        run_spec("finetune", tmp_path / "vanilla", data_dir, preset="full", overrides=fsets, **run)
    )
    model, proc = load_llava(tmp_path / "vanilla" / "model")
    van = evaluate_model(model, proc, data_dir, data, ecfg)["subsets"]
    trained = read_split(data_dir, "forget_train")  # the QA pairs NPO ascends on
    van_nll = answer_scores(model, Encoder(proc, data_dir), trained, 64, 0.4)["nll"].mean()
    # the vanilla model learned the forget set: far better than on held-out patients
    assert van["forget"]["nll"] < 0.5 * van["general"]["nll"]
    assert knowledge_score(van["forget"]) > 2 * knowledge_score(van["general"])

    # NPO (beta 0.4, the top of the notes' range) with a strong retain term (alpha 20) and a
    # small step: the paper-default alpha = 1 loses more retain knowledge on this tiny model.
    usets = ("lr=2e-4", "epochs=12.0", "alpha=20.0", "beta=0.4")
    vanilla = {"model": tmp_path / "vanilla"}
    spec = run_spec("unlearn", tmp_path / "npo", data_dir, method="npo", preset="small",
                    overrides=usets, options=vanilla, **run)  # fmt: skip
    unlearn(spec)
    model, proc = load_llava(tmp_path / "npo" / "model")
    un = evaluate_model(model, proc, data_dir, data, ecfg)["subsets"]
    assert knowledge_score(un["forget"]) < 0.5 * knowledge_score(van["forget"])
    un_nll = answer_scores(model, Encoder(proc, data_dir), trained, 64, 0.4)["nll"].mean()
    assert un_nll > 2 * van_nll, (van_nll, un_nll)
    assert un["forget"]["nll"] > van["forget"]["nll"]  # and the probes' NLL rises too
    assert knowledge_score(un["retain"]) >= 0.8 * knowledge_score(van["retain"])
