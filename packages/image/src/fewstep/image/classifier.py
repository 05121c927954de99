"""Small CNN classifier whose penultimate features define dFD (a FID analogue, Heusel et al. 2017).

Inception features mean little on 16x16 digits or 32x32 shapes, so fewstep trains its own small
classifier per dataset and ships it in ``weights/``. It is trained on lightly augmented, and
sometimes noisy or blurred, images so that its features stay stable on imperfect samples.
Retrain a shipped copy with ``fewstep-image train-classifier digits``.
"""

from __future__ import annotations

import contextlib
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from fewstep.core.checks import SaveEvery
from fewstep.core.io import CheckpointError, load_state_into, load_weights, save_weights
from fewstep.core.train import TrainConfig, train
from fewstep.image.data import dataset_info, load_dataset
from torch import nn

# Training recipe of the shipped weights, per dataset: steps, and max relative scale jitter.
DEFAULT_STEPS = {"digits": 1500, "shapes": 1000, "photos": 1500}
SCALE_JITTER = {"digits": 0.10, "shapes": 0.05, "photos": 0.05}


def weights_dir() -> Path:
    """Folder of the shipped classifier checkpoints (inside the installed package)."""
    return Path(__file__).resolve().parent / "weights"


# The two roles a shipped classifier plays. "eval" defines dFD and accuracy and is never handed to a
# method; "reward" is what methods may optimise (Flash-DMD's reward). The reward net is trained on
# the other half of the train split, with another seed, so the evaluation cannot be gamed through it.
ROLES = ("eval", "reward")
REWARD_RECIPE = {"half": 1, "seed": 1}


def classifier_path(dataset_name: str, role: str = "eval") -> Path:
    """Checkpoint stem of the shipped classifier for a dataset and role: weights/digits-classifier
    (evaluation) or weights/digits-reward-classifier (what methods may train against)."""
    dataset_info(dataset_name)  # validates the name
    if role not in ROLES:
        raise ValueError(f"role={role!r}; use one of {ROLES}")
    return weights_dir() / (f"{dataset_name}-classifier" if role == "eval" else f"{dataset_name}-reward-classifier")


def half_of_train(n: int, half: int) -> torch.Tensor:
    """Indices of one half (0 or 1) of a train split of n rows, by a fixed permutation."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(12345))
    return perm[: n // 2] if half == 0 else perm[n // 2 :]


@dataclass(frozen=True)
class ClassifierConfig:
    """Shape of the classifier; stored in the checkpoint card."""

    in_channels: int
    image_size: int
    num_classes: int
    width: int = 32
    feat_dim: int = 128

    def __post_init__(self):
        if min(self.in_channels, self.num_classes, self.width, self.feat_dim) < 1:
            raise ValueError(f"all sizes must be positive: {self}")
        if self.image_size < 4 or self.image_size % 4:
            raise ValueError(f"image_size must be a multiple of 4 (>= 4), got {self.image_size}.")


def _block(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    """3x3 conv, GroupNorm (per-sample, so features do not depend on the batch), SiLU."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.GroupNorm(8 if c_out % 8 == 0 else 1, c_out),
        nn.SiLU(),
    )


class Classifier(nn.Module):
    """Five conv blocks (two stride-2), a 2x2 average pool, a feat_dim layer and a linear head."""

    def __init__(self, config: ClassifierConfig):
        super().__init__()
        self.config = config
        c, w = config.in_channels, config.width
        self.body = nn.Sequential(
            _block(c, w),  # (B, w, H, W)
            _block(w, w, stride=2),  # (B, w, H/2, W/2)
            _block(w, 2 * w),
            _block(2 * w, 2 * w, stride=2),  # (B, 2w, H/4, W/4)
            _block(2 * w, 4 * w),
            nn.AdaptiveAvgPool2d(2),  # (B, 4w, 2, 2): keeps a little layout information
            nn.Flatten(),  # (B, 16w)
        )
        self.fc = nn.Linear(16 * w, config.feat_dim)
        self.head = nn.Linear(config.feat_dim, config.num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features (B, feat_dim) of images x (B, C, H, W) in [-1, 1]; used for dFD."""
        return F.silu(self.fc(self.body(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits (B, num_classes)."""
        return self.head(self.features(x))


# -------------------------------------------------------------------------------- augmentation


def _blur3(x: torch.Tensor) -> torch.Tensor:
    """Depthwise 3x3 binomial blur ([1, 2, 1] / 4 in each direction), reflect padding."""
    k1 = torch.tensor([1.0, 2.0, 1.0], device=x.device, dtype=x.dtype) / 4
    k = (k1[:, None] * k1[None, :]).expand(x.shape[1], 1, 3, 3)  # (C, 1, 3, 3)
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), k, groups=x.shape[1])


def augment(
    x: torch.Tensor, g: torch.Generator, shift_px: float = 2.0, scale_jitter: float = 0.1
) -> torch.Tensor:
    """Random shift and scale, then (each with prob. 1/2) a partial blur and Gaussian noise.

    x: (B, C, H, W) in [-1, 1]. Blur and noise mimic imperfect generated samples, so that the
    classifier's features (used for dFD) are stable on them rather than only on clean data.
    """
    b, _, h, _ = x.shape

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=g).to(x.device)

    # Affine: out(p) = x(A p + t), A = s I, t in normalised [-1, 1] coordinates.
    s = 1 + scale_jitter * (2 * rand(b) - 1)  # (B,)
    t = (2 * rand(b, 2) - 1) * (2 * shift_px / h)  # (B, 2)
    theta = torch.zeros(b, 2, 3, device=x.device)
    theta[:, 0, 0] = theta[:, 1, 1] = s
    theta[:, :, 2] = t
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    # Partial blur of random strength a in [0, 1] for half of the batch.
    a = rand(b, 1, 1, 1) * (rand(b, 1, 1, 1) < 0.5)
    x = x + a * (_blur3(x) - x)
    # Gaussian noise of random std in [0, 0.25] for half of the batch.
    std = 0.25 * rand(b, 1, 1, 1) * (rand(b, 1, 1, 1) < 0.5)
    noise = torch.randn(x.shape, generator=g).to(x.device)
    return (x + std * noise).clamp(-1.0, 1.0)


# ------------------------------------------------------------------------------------ training


@torch.no_grad()
def predict(model: Classifier, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Predicted labels (N,) of images x (N, C, H, W), in batches."""
    model.eval()
    dev = next(model.parameters()).device
    out = [
        model(x[i : i + batch_size].to(dev)).argmax(1).cpu() for i in range(0, len(x), batch_size)
    ]
    return torch.cat(out)


def accuracy(model: Classifier, x: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of images x whose predicted label equals y."""
    return float((predict(model, x) == y).float().mean())


def train_classifier(
    dataset_name: str,
    steps: int | None = None,
    seed: int = 0,
    batch_size: int = 128,
    lr: float = 2e-3,
    weight_decay: float = 0.05,
    width: int = 32,
    feat_dim: int = 128,
    progress: bool = True,
    work_dir: str | Path | None = None,
    save_every: SaveEvery | None = None,
    resume: bool = True,
    half: int | None = None,
) -> tuple[Classifier, dict]:
    """Train a classifier on a dataset's train split: AdamW, warmup + cosine lr, augmentation.

    Runs on the core train loop (``fewstep.core.train``), so a run with a ``work_dir`` saves every
    ``save_every``, on Ctrl-C and SIGTERM, and resumes (``resume=False`` discards a saved run);
    without one it checkpoints into a temporary folder. Returns the model (eval mode, CPU) and a
    dict for the checkpoint card: dataset, test accuracy and how it was made. ``half`` (0 or 1)
    trains on that half of the train split only (:func:`half_of_train`).
    """
    steps = DEFAULT_STEPS[dataset_name] if steps is None else steps
    if steps < 1:
        raise ValueError(f"steps={steps}: train for at least 1 iteration")
    info = dataset_info(dataset_name)
    x_train, y_train = load_dataset(dataset_name, "train")
    if half is not None:
        keep = half_of_train(len(x_train), half)
        x_train, y_train = x_train[keep], y_train[keep]
    x_test, y_test = load_dataset(dataset_name, "test")
    torch.manual_seed(seed)
    config = ClassifierConfig(info.channels, info.size, info.num_classes, width, feat_dim)
    model = Classifier(config)
    jitter = SCALE_JITTER.get(dataset_name, 0.05)
    cfg = TrainConfig(iterations=steps, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                      warmup_iterations=max(1, steps // 20), lr_schedule="cosine", ema_decay=0.0, grad_clip=0.0,
                      amp="off", seed=seed, progress=progress, **(save_every or SaveEvery()).fields())

    def loss_fn(net, batch, gen):
        return F.cross_entropy(net(augment(batch[0], gen, scale_jitter=jitter)), batch[1], label_smoothing=0.05)

    with tempfile.TemporaryDirectory() if work_dir is None else contextlib.nullcontext(work_dir) as work:
        result = train(model, loss_fn, [x_train, y_train], cfg, Path(work),
                       card={"kind": "classifier-run", "dataset": dataset_name, "config": asdict(config), "half": half},
                       resume=resume)
    model = model.cpu().eval()
    made = {
        "dataset": dataset_name,
        "test_accuracy": accuracy(model, x_test, y_test),
        "n_test": len(y_test),
        "train_rows": "all" if half is None else f"half {half} of the train split ({len(x_train)} rows)",
        "made": {
            "by": f"fewstep-image train-classifier {dataset_name} --iterations {steps} --seed {seed}"
                  + ("" if half is None else " --role reward"),
            "steps": steps,
            "seed": seed,
            "batch_size": batch_size,
            "lr": lr,
            "weight_decay": weight_decay,
            "optimizer": "AdamW, linear warmup then cosine decay, label smoothing 0.05 (fewstep.core.train)",
            "augmentation": "shift +-2 px, scale jitter, partial 3x3 blur, Gaussian noise",
            "train_seconds": round(result.seconds, 1),
            "torch": torch.__version__,
        },
    }
    return model, made


def retrain_classifier(
    dataset_name: str,
    out: str | Path,
    iterations: int | None = None,
    seed: int = 0,
    work_dir: str | Path | None = None,
    save_every: SaveEvery | None = None,
    resume: bool = True,
    progress: bool = True,
    role: str = "eval",
) -> dict:
    """Train with the shipped recipe and save at ``out`` (resumable from ``work_dir``, default
    ``out.work``); returns the card facts (test accuracy, recipe). ``role="reward"`` trains the
    net methods may optimise: the other half of the train split (and seed ``REWARD_RECIPE``)."""
    if role not in ROLES:
        raise ValueError(f"role={role!r}; use one of {ROLES}")
    work = Path(work_dir) if work_dir is not None else Path(f"{out}.work")
    half = REWARD_RECIPE["half"] if role == "reward" else None
    model, made = train_classifier(dataset_name, steps=iterations, seed=seed, progress=progress, work_dir=work,
                                   save_every=save_every, resume=resume, half=half)
    made["role"] = role
    save_classifier(model, out, made)
    return made


# ------------------------------------------------------------------------------------- save/load


def save_classifier(model: Classifier, path, card_extra: dict | None = None) -> Path:
    """Save via fewstep.core.io: weights + card {kind: "classifier", config, **card_extra}."""
    card = {"kind": "classifier", "config": asdict(model.config), **(card_extra or {})}
    return save_weights(path, model.state_dict(), card)


def load_classifier(path) -> Classifier:
    """Load a classifier checkpoint (eval mode, CPU); bad files raise CheckpointError."""
    tensors, card = load_weights(path)
    if card.get("kind") != "classifier":
        raise CheckpointError(f"{path}: card kind is {card.get('kind')!r}, not 'classifier'.")
    try:
        config = ClassifierConfig(**card["config"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: card has no valid classifier config ({e}).")
    model = Classifier(config)
    load_state_into(model, tensors, str(path))
    return model.eval()
