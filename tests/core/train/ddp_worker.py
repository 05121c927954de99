"""Run by test_train under torchrun (world size 2, gloo): train a tiny denoiser, dump each rank's weights."""

import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).parents[1]))  # tests/core: the shared tiny models
from tiny import tiny_data, tiny_denoiser  # noqa: E402

from fewstep.core.io import save_weights  # noqa: E402
from fewstep.core.losses import DenoisingLoss  # noqa: E402
from fewstep.core.train import TrainConfig, train  # noqa: E402

out = Path(sys.argv[1])
torch.set_num_threads(1)
den = tiny_denoiser(seed=0)
x, y = tiny_data()
loss = DenoisingLoss()
cfg = TrainConfig(iterations=12, batch_size=16, lr=1e-2, warmup_iterations=1, ckpt_every=6, progress=False)
res = train(den, lambda m, b, g: loss(m, den, b[0], b[1], g), [x, y], cfg, out / "work")
rank = dist.get_rank()
save_weights(out / f"rank{rank}", den.state_dict(), {"rank": rank, "world": dist.get_world_size(), "loss": res.losses[-1]})
dist.destroy_process_group()
