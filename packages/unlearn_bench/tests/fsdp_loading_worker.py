"""Loading under FSDP as ``accelerate launch`` with the shipped config does it, for
``test_fsdp.py`` (run under torchrun, gloo, with the environment accelerate exports).

``python fsdp_loading_worker.py VANILLA OUT CONFIG.yaml``: every rank calls
``unlearn_bench.model.load_llava``; then, as accelerate's FSDP2 preparation does with
``cpu_ram_efficient_loading``, rank 0's state dict is kept, the model is moved to the
meta device, sharded by the config's wrap classes (``scale.shard``) and filled by
accelerate's own ``fsdp2_load_full_state_dict`` (a broadcast from rank 0). Each rank
writes ``OUT/rank<r>.json``: the bytes of parameters it held after loading, its peak
RSS, and the largest difference of its gathered weights from the checkpoint's.
"""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path
from types import SimpleNamespace

import torch


def main(vanilla: str, out: str, config: str) -> None:
    import torch.distributed as dist
    from accelerate.utils.fsdp_utils import fsdp2_load_full_state_dict, get_non_persistent_buffers
    from safetensors.torch import load_file

    from unlearn_bench.model import load_llava
    from unlearn_bench.scale import fsdp_layer_names, shard

    model, _ = load_llava(vanilla)
    started_by_loader = dist.is_initialized()  # load_llava's PartialState, under the flag
    if not started_by_loader:
        dist.init_process_group("gloo")
    rank = dist.get_rank()
    # accelerate's state on CPU falls back to one process (it builds FSDP only on GPUs),
    # so the broadcast gets the rank and device from torch.distributed
    state = SimpleNamespace(device=torch.device("cpu"), is_main_process=rank == 0)
    held = sum(p.numel() * p.element_size() for p in model.parameters() if not p.is_meta)
    meta = sum(p.is_meta for p in model.parameters())
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    # accelerate's fsdp2_prepare_model with cpu_ram_efficient_loading, step by step: keep
    # the non-persistent buffers, move to meta, shard, broadcast rank 0's state dict,
    # put the buffers back
    keep = get_non_persistent_buffers(model, recurse=True, fqns=True)
    buffers = {k: v.clone() for k, v in model.named_buffers() if k in keep}
    full_sd = model.state_dict() if rank == 0 else {}
    model = model.to(torch.device("meta"))
    shard(model, fsdp_layer_names(config))
    fsdp2_load_full_state_dict(state, model, full_sd)
    for fqn, value in buffers.items():
        parent, _, name = fqn.rpartition(".")
        model.get_submodule(parent).register_buffer(name, value, persistent=False)
    buffers = {n: float(b.double().sum()) for n, b in model.named_buffers()}
    reference = load_file(str(Path(vanilla) / "model" / "model.safetensors")) if rank == 0 else {}
    worst, sums = 0.0, {}
    for name, p in model.state_dict().items():
        full = p.full_tensor() if hasattr(p, "full_tensor") else p  # collective: every rank
        sums[name] = float(full.double().sum())
        if rank == 0 and name in reference:
            worst = max(worst, (full.float() - reference[name].float()).abs().max().item())
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / f"rank{rank}.json").write_text(
        json.dumps(
            {
                "held_bytes": held,
                "meta_params": meta,
                "n_params": len(list(model.parameters())),
                "peak_rss_mb": rss_mb,
                "max_abs_diff": worst,
                "compared": len(reference),
                "buffers": buffers,
                "sums": sums,
                "started_by_loader": started_by_loader,
            }
        )
    )
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:4])
