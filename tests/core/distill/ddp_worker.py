"""Run by test_distill_framework under torchrun (world size 2, gloo): distil a tiny UNet with METHOD
(argv[2], default cd; dmd2 has critic-only iterations, so DDP must allow parameters without
gradients) under STRATEGY (argv[3]: ddp, the default, or fsdp)."""

import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).parents[1]))  # tests/core: the shared tiny models
from tiny import tiny_unet_denoiser  # noqa: E402

from fewstep.core.card import ModelCard
from fewstep.core.distill import DistillConfig, distill, make_objective  # noqa: E402
from fewstep.core.io import save_weights  # noqa: E402
from fewstep.core.train import TrainConfig  # noqa: E402

out = Path(sys.argv[1])
method = sys.argv[2] if len(sys.argv) > 2 else "cd"
strategy = sys.argv[3] if len(sys.argv) > 3 else "ddp"
torch.set_num_threads(1)
teacher = tiny_unet_denoiser(seed=0)
teacher.card = ModelCard(provenance={"dataset": "toy"})
g = torch.Generator().manual_seed(0)
x, y = torch.randn(32, 1, 8, 8, generator=g).clamp(-1, 1), torch.randint(0, 3, (32,), generator=g)
cfg = DistillConfig(student_steps=2, train=TrainConfig(iterations=4, batch_size=8, lr=1e-3, warmup_iterations=1, save_every=2, progress=False,
                                                         strategy=strategy))
res = distill(teacher, make_objective(method), cfg, out / "student", data=(x, y), work_dir=out / "work", progress=False)
rank = dist.get_rank()
save_weights(out / f"rank{rank}", res.student.net.state_dict(), {"rank": rank})
dist.destroy_process_group()
