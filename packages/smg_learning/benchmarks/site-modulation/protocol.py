"""Is it the site modulation? SMD replay against its two controls (issue #22), fixed before any run.

SMD replay works on the committed benchmarks (+0.32 to +0.37 memorizability over
fine-tuning at ``small``), but nothing separates the *site modulation* (one learnable
prompt per site) from generative replay as such, or from a cheap restyling of real
data. Rows, on the ``small`` preset and data (training order RUNMC -> BMC -> I2CVB ->
UCL, held out BIDMC and HK; its sites alternate the gland's polarity), seeds :data:`SEEDS`,
one CPU thread per run:

- ``smd-replay``: the SMD with one prompt per site (the paper's);
- ``smd-oneprompt``: the same SMD, trained and sampled with one shared prompt for every
  site (``smd.shared_prompt``): its replay of each earlier site is a draw from the
  mixture of the sites it has seen;
- ``style-replay``: no generative model; the current site's real slices, each mapped by
  quantile matching onto an earlier site's intensity distribution (only 101 quantiles
  a site are kept). Monotone: it cannot flip the gland's polarity;
- ``finetune`` (no replay) and ``replay-real`` (stored real slices) as the two ends.

Every replay row replays ``smd.replay_per_site`` (64) slices a site, ``replay-real``
``replay_per_site`` (64) stored ones.

Sample quality, on each run's replay of its last stage (the three sites before UCL),
with two judges trained once on real training slices of those sites (seed 0, the
SMD's resolution: slices down to 16 px and back, as ``benchmarks/costs/`` does, for
every row alike):

- ``site_acc``: a site classifier's accuracy on the replay, labelled by the site each
  replayed slice stands in for (chance 1/3);
- ``mask_dice``: Dice of the replayed mask against a segmenter's reading of the
  replayed image (the segmenter trained 300 steps on the real slices).

Claims on the paired per-seed differences, 95 % t-interval (margins fixed here: 0.02
Dice, twice the PGA margin, since a site prompt is a whole mechanism, not a step
size; 0.1 of site accuracy):
"""

from __future__ import annotations

from medcommon.report import Claim

SEEDS = (0, 1, 2, 3, 4)
THREADS = 1
PRESET = "small"
DATA_SEED = 0
SITES = ("RUNMC", "BMC", "I2CVB", "UCL")
HELDOUT = ("BIDMC", "HK")
JUDGE_STEPS = 300
JUDGE_SEED = 0

#: row -> (strategy, changes to the run config)
ROWS = {
    "finetune": ("finetune", {}),
    "replay-real": ("replay-real", {}),
    "smd-replay": ("smd-replay", {}),
    "smd-oneprompt": ("smd-replay", {"smd": {"shared_prompt": True}}),
    "style-replay": ("style-replay", {}),
}

MEM, GEN = "memorizability", "generalizability"
CLAIMS: tuple[Claim, ...] = (
    Claim("Site prompts: SMD replay remembers better than one shared prompt", "smd-replay",
          "smd-oneprompt", MEM, margin=0.02),
    Claim("Site prompts: SMD replay generalises better than one shared prompt", "smd-replay",
          "smd-oneprompt", GEN, margin=0.02),
    Claim("SMD replay remembers better than style-transfer replay", "smd-replay",
          "style-replay", MEM, margin=0.02),
    Claim("SMD replay generalises better than style-transfer replay", "smd-replay",
          "style-replay", GEN, margin=0.02),
    Claim("Site prompts make the replay recognisable by site", "smd-replay", "smd-oneprompt",
          "site_acc", margin=0.1),
)  # fmt: skip
