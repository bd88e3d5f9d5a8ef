"""unlearn-bench: an MLLMU-Med style unlearning benchmark for biomedical multimodal LLMs.

Table of contents:

- :mod:`.synth` / :mod:`.images`: the data generation pipeline (privacy, incorrectness).
- :mod:`.data`: reading and validating a dataset folder; prompts; batches.
- :mod:`.model`: the tiny Llava + BPE tokenizer, and loading any local Llava checkpoint.
- :mod:`.losses`: the unlearning objectives as functions of logits / hidden states.
- :mod:`.methods`: one file per unlearning method, a registry (``METHODS``).
- :mod:`.train`: ``finetune``, ``retrain`` and ``unlearn`` on ``medcommon.train.Trainer``.
- :mod:`.evaluate` / :mod:`.ues`: per-subset metrics, membership inference, UES.
- :mod:`.predict`: answers of a Llava folder to new questions (the ``predict`` command).
- :mod:`.benchmark`, :mod:`.cli`.
"""

__version__ = "0.1.0"
PACKAGE = "unlearn-bench"  # the name in run folders and results.json
