"""One FSDP run of NPO on the tiny Llava, for ``test_fsdp.py`` (run under torchrun, gloo).

``python fsdp_worker.py VANILLA DATA OUT CONFIG.yaml``: with W > 1 processes the Llava
is sharded with FSDP2 by the config's wrap classes (``unlearn_bench.scale.shard``);
with 1 process it is a plain module. Each step takes a global batch of 8 forget items
(paired with retain item i), split in W contiguous shares; the loss is the package's
NPO loss with its DDP token means; AdamW with clipping. Rank 0 writes the full state
dict to ``OUT/model.safetensors`` and, to ``OUT/units.json``, the wrapped class names
and how many parameters it held against the model's total.
"""

from __future__ import annotations

import copy
import json
import sys
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist


def main(vanilla: str, data_dir: str, out: str, config: str) -> None:
    from safetensors.torch import save_file
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from unlearn_bench.data import Encoder, check_dataset, paired_collate
    from unlearn_bench.methods import METHODS, Forwards
    from unlearn_bench.model import load_llava
    from unlearn_bench.scale import fsdp_layer_names, shard

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)
    model, processor = load_llava(vanilla)
    cls = METHODS.get("npo")
    method = cls(cls.preset_config("tiny"), ref=copy.deepcopy(model).eval().requires_grad_(False))
    data = check_dataset(Path(data_dir), ("forget", "retain"))
    enc = Encoder(processor, data_dir)
    forget = [enc.encode(it) for it in data["forget"]]
    retain = [enc.encode(it) for it in data["retain"]]
    items = [{"forget": f, "retain": retain[i]} for i, f in enumerate(forget)]
    collate = partial(paired_collate, pad_id=processor.tokenizer.pad_token_id)
    net = Forwards(model)
    units = shard(net, fsdp_layer_names(config)) if world > 1 else []
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    batch, share = 8, 8 // world
    for step in range(3):
        part = items[step * batch + rank * share : step * batch + (rank + 1) * share]
        loss = method.loss(net, collate(part), None)["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    # the parameters this process holds: about 1/W of them when sharded
    local = sum((p.to_local() if hasattr(p, "to_local") else p).numel() for p in model.parameters())
    full = sum(p.numel() for p in model.parameters())
    sd = get_model_state_dict(net, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank == 0:
        Path(out).mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in sd.items()}, str(Path(out) / "model.safetensors"))
        (Path(out) / "units.json").write_text(
            json.dumps({"units": units, "local_numel": local, "full_numel": full})
        )
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:5])
