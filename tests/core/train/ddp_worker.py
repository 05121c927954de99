"""Run by test_train under torchrun (world size 2, gloo): train a two-part module (a tiny UNet student
and a critic with its own optimiser settings and update ratio) with STRATEGY (argv[2]: ddp or fsdp;
argv[3:] may add "ac" for activation checkpointing and "bf16" for mixed precision): 2N iterations
straight, and N then resumed to 2N in a fresh module (kill-free resume); dump each rank's results."""

import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).parents[1]))  # tests/core: the shared tiny models
from train.pair import make_pair, pair_data, pair_loss

from fewstep.core.io import save_weights
from fewstep.core.train import TrainConfig, train

out, strategy, extras = Path(sys.argv[1]), sys.argv[2], set(sys.argv[3:])
N = 4
torch.set_num_threads(1)
data = pair_data()


def run(work: Path, iterations: int):
    module = make_pair()
    cfg = TrainConfig(iterations=iterations, batch_size=8, lr=1e-2, warmup_iterations=1, save_every=N, progress=False,
                      strategy=strategy, activation_checkpointing="ac" in extras, amp="bf16" if "bf16" in extras else "off")
    res = train(module, pair_loss, list(data), cfg, work)
    return module, res


full, res_full = run(out / "full", 2 * N)  # starts the process group
rank = dist.get_rank()
run(out / "part", N)
resumed, res = run(out / "part", 2 * N)
for name, m, r in (("full", full, res_full), ("resumed", resumed, res)):
    tensors = {**{f"model.{k}": v for k, v in m.state_dict().items()}, **{f"ema.{k}": v for k, v in r.ema.items()}}
    plain = all(type(v) is torch.Tensor for v in m.state_dict().values())  # not DTensors: the caller's module is plain
    save_weights(out / f"{name}_rank{rank}", tensors, {"rank": rank, "world": dist.get_world_size(), "losses": r.losses,
                                                      "resumed_from": r.resumed_from, "updates": r.updates, "plain": plain})
dist.destroy_process_group()
