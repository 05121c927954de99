"""diffusers models behind the fewstep Denoiser contract (the adapter of DPM-Solver's ``model_wrapper``).

A diffusers model takes ``model(sample, timestep, class_labels=... | encoder_hidden_states=...)``
and returns ``.sample``; fewstep calls ``net(x, net_time, cond)``. :class:`DiffusersNet` converts
one call into the other and :func:`from_diffusers` adds the schedule and parametrisation read from
the diffusers scheduler. Nothing here downloads: :func:`load_diffusers` reads local folders only.

Time: fewstep's ``schedule.net_time(t)`` is already the diffusers timestep. For ``VPDiscrete`` it
is the (fractional) discrete step index n = t N - 1; for ``RectifiedFlow`` it is 1000 t, which is
what diffusers' flow-matching schedulers feed their transformers.

Conditioning, and what classifier-free guidance sends as the unconditional branch:
- class labels (``UNet2DModel`` with ``num_class_embeds``, ``DiTTransformer2DModel``): int labels
  pass straight through; the null label is ``num_classes``. For a UNet2DModel that is
  ``num_class_embeds - 1`` by convention, so the model must have been trained with its last class
  as the "no class" label. For DiT it is ``num_embeds_ada_norm`` (DiT's own label-dropout class).
- text embeddings (``UNet2DConditionModel``): cond is ``encoder_hidden_states`` (B, L, D); rows
  that are all NaN (fewstep's null cond) are replaced by ``null_embedding`` (L, D), e.g. the
  empty-prompt embedding.
- unconditional models: cond must be None.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from . import schedules
from .card import ModelCard
from .denoiser import Denoiser

WEIGHT_SUFFIXES = (".safetensors", ".bin")


def _config(model: nn.Module) -> dict[str, Any]:
    cfg = getattr(model, "config", None)
    return dict(cfg) if isinstance(cfg, dict) else {}


def _forward_params(model: nn.Module) -> list[str]:
    return list(inspect.signature(model.forward).parameters)


class DiffusersNet(nn.Module):
    """``net(x, net_time, cond) -> prediction`` around a diffusers model.

    Args:
        model: a diffusers model whose forward takes (sample | hidden_states, timestep, ...).
        null_label: label fed for a missing cond on class-conditional models (None: not one).
        null_embedding: (L, D) embedding fed for NaN rows / a missing cond on text models.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        null_label: int | None = None,
        null_embedding: Tensor | None = None,
    ):
        super().__init__()
        self.model = model
        params = _forward_params(model)
        if not params:
            raise TypeError(
                f"{type(model).__name__}.forward takes no arguments; not a diffusion model"
            )
        if "timestep" not in params:
            raise TypeError(
                f"{type(model).__name__}.forward{tuple(params)} has no 'timestep' argument; "
                "expected (sample | hidden_states, timestep, ...)"
            )
        self.sample_arg = params[0]  # "sample" (UNets) or "hidden_states" (transformers)
        cfg = _config(model)
        if "encoder_hidden_states" in params:
            self.cond_mode = "embedding"
        elif "class_labels" in params and (
            cfg.get("num_class_embeds") or cfg.get("num_embeds_ada_norm")
        ):
            self.cond_mode = "labels"
        else:
            self.cond_mode = "none"
        self.null_label = null_label
        if null_embedding is not None:
            if self.cond_mode != "embedding":
                raise ValueError(
                    f"null_embedding given but {type(model).__name__} takes no encoder_hidden_states"
                )
            null_embedding = torch.as_tensor(null_embedding)
            if null_embedding.ndim == 3 and null_embedding.shape[0] == 1:
                null_embedding = null_embedding[0]
            if null_embedding.ndim != 2:
                raise ValueError(
                    f"null_embedding must have shape (L, D), got {tuple(null_embedding.shape)}"
                )
        self.register_buffer("null_embedding", null_embedding, persistent=False)
        in_ch, out_ch = cfg.get("in_channels"), cfg.get("out_channels")
        # DiT / improved-DDPM nets with learned variance output [prediction, variance] on channels.
        self.learned_sigma = in_ch is not None and out_ch is not None and out_ch == 2 * in_ch

    # -- conditioning --------------------------------------------------------------------------
    def _labels(self, x: Tensor, cond: Tensor | None) -> Tensor:
        if cond is None:
            return torch.full((x.shape[0],), self.null_label, dtype=torch.long, device=x.device)
        if cond.is_floating_point():
            raise TypeError(
                f"{type(self.model).__name__} takes int class labels, got a {cond.dtype} cond"
            )
        return cond.to(x.device)

    def _embedding(self, x: Tensor, cond: Tensor | None) -> Tensor:
        null = self.null_embedding
        if cond is None:
            if null is None:
                raise ValueError(
                    f"{type(self.model).__name__} needs encoder_hidden_states; give cond (B, L, D) "
                    "or a null_embedding (L, D) for unconditional calls"
                )
            return null.to(x.device, x.dtype).expand(x.shape[0], *null.shape)
        if cond.ndim != 3:
            raise ValueError(
                f"cond must be encoder_hidden_states (B, L, D), got {tuple(cond.shape)}"
            )
        nan = torch.isnan(cond)
        is_null = nan.flatten(1).all(1)  # (B,) rows that are fewstep's null cond
        if not nan.any():
            return cond
        if bool((nan.flatten(1).any(1) & ~is_null).any()):
            raise ValueError(
                "cond has NaN values in rows that are not entirely NaN (null rows must be all NaN)"
            )
        if null is None:
            raise ValueError(
                "cond has all-NaN (unconditional) rows but no null_embedding was given; pass "
                "from_diffusers(..., null_embedding=<(L, D) empty-prompt embedding>) to use guidance"
            )
        if tuple(null.shape) != tuple(cond.shape[1:]):
            raise ValueError(
                f"null_embedding has shape {tuple(null.shape)} but cond rows are {tuple(cond.shape[1:])}"
            )
        return torch.where(is_null.view(-1, 1, 1), null.to(cond.device, cond.dtype), cond)

    # -- call ------------------------------------------------------------------------------------
    def forward(self, x: Tensor, net_time: Tensor, cond: Tensor | None = None) -> Tensor:
        dtype = getattr(self.model, "dtype", x.dtype)
        kwargs: dict[str, Any] = {self.sample_arg: x.to(dtype), "timestep": net_time}
        if self.cond_mode == "labels":
            kwargs["class_labels"] = self._labels(x, cond)
        elif self.cond_mode == "embedding":
            kwargs["encoder_hidden_states"] = self._embedding(x, cond).to(dtype)
        elif cond is not None:
            raise ValueError(f"{type(self.model).__name__} is unconditional; cond must be None")
        out = self.model(**kwargs)
        out = (
            out.sample
            if hasattr(out, "sample")
            else out[0]
            if isinstance(out, (tuple, list))
            else out
        )
        if self.learned_sigma:
            out = out[:, : x.shape[1]]  # (B, C, H, W): drop the learned-variance half
        return out.to(x.dtype)


def _sample_shape(model: nn.Module) -> tuple[int, ...] | None:
    cfg = _config(model)
    c, size = cfg.get("in_channels"), cfg.get("sample_size")
    if c is None or size is None:
        return None
    hw = (size, size) if isinstance(size, int) else tuple(size)
    return (int(c), *map(int, hw))


def _null_label(model: nn.Module) -> int | None:
    cfg = _config(model)
    if cfg.get("num_class_embeds"):
        return int(cfg["num_class_embeds"]) - 1  # convention: the last class is "no class"
    if cfg.get("num_embeds_ada_norm"):
        return int(cfg["num_embeds_ada_norm"])  # DiT's label-dropout class
    return None


def from_diffusers(
    model: nn.Module,
    scheduler: Any,
    *,
    sample_shape: tuple[int, ...] | None = None,
    guidance: float = 1.0,
    null_embedding: Tensor | None = None,
) -> Denoiser:
    """Wrap a diffusers model (UNet2DModel, UNet2DConditionModel, DiT-style transformer) as a Denoiser.

    ``scheduler`` is a diffusers scheduler or its config dict; it gives the schedule and the
    prediction type. ``sample_shape`` defaults to (in_channels, sample_size, sample_size) from the
    model config. The model is put in eval mode (DiT drops labels at random in train mode).
    """
    schedule, prediction = schedules.from_diffusers(scheduler)
    net = DiffusersNet(model, null_label=_null_label(model), null_embedding=null_embedding)
    num_classes = net.null_label if net.cond_mode == "labels" else 0
    if guidance != 1.0 and net.cond_mode == "none":
        raise ValueError(
            f"guidance={guidance} needs a conditional model; {type(model).__name__} is unconditional"
        )
    model.eval()
    return Denoiser(
        net,
        schedule,
        prediction,
        sample_shape=sample_shape if sample_shape is not None else _sample_shape(model),
        num_classes=num_classes or 0,
        guidance=guidance,
        card=ModelCard(provenance={"source": "diffusers", "class": type(model).__name__}),
    ).eval()  # a pretrained model is for sampling (guidance, clipping); call .train() to fine-tune


# -- loading from disk -------------------------------------------------------------------------
def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e


def _model_dir(folder: Path, subfolder: str | None) -> Path:
    candidates = [folder / subfolder] if subfolder else []
    if subfolder == "unet":
        candidates.append(folder / "transformer")  # DiT / flow pipelines
    candidates.append(folder)  # a bare model folder
    for d in candidates:
        if (d / "config.json").is_file():
            return d
    tried = ", ".join(str(d / "config.json") for d in candidates)
    raise FileNotFoundError(
        f"no diffusers model config in {folder}: looked for {tried}. Expected a folder written by "
        "model.save_pretrained (config.json + diffusion_pytorch_model.safetensors), or a pipeline "
        "folder with unet/ or transformer/ and scheduler/ subfolders"
    )


def _scheduler_dir(folder: Path, model_dir: Path, subfolder: str | None) -> Path:
    candidates = [folder / subfolder] if subfolder else []
    candidates += [folder, model_dir]
    for d in dict.fromkeys(candidates):
        if (d / "scheduler_config.json").is_file():
            return d
    tried = ", ".join(str(d / "scheduler_config.json") for d in dict.fromkeys(candidates))
    raise FileNotFoundError(
        f"no diffusers scheduler config for {folder}: looked for {tried}. Save one with "
        "scheduler.save_pretrained(<folder>/scheduler)"
    )


def load_diffusers(
    folder: str | Path,
    subfolder_model: str | None = "unet",
    subfolder_scheduler: str | None = "scheduler",
    **kw: Any,
) -> Denoiser:
    """Load a diffusers model + scheduler saved with ``save_pretrained`` and wrap it (local files only).

    ``folder`` is a pipeline folder (``unet/`` or ``transformer/`` plus ``scheduler/``) or a model
    folder; the subfolders may also be absolute paths (a model folder plus a scheduler folder
    elsewhere). ``kw`` goes to :func:`from_diffusers` (sample_shape, guidance, null_embedding).
    """
    import diffusers  # lazy: importing fewstep.core never pulls in diffusers

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"diffusers folder {folder} does not exist (or is not a folder)")
    model_dir = _model_dir(folder, subfolder_model)
    if not any(p.name.endswith(WEIGHT_SUFFIXES) for p in model_dir.iterdir()):
        raise FileNotFoundError(
            f"{model_dir} has config.json but no weights (diffusion_pytorch_model.safetensors or .bin)"
        )
    sched_dir = _scheduler_dir(folder, model_dir, subfolder_scheduler)

    classes = {}
    for d, cfg_name in ((model_dir, "config.json"), (sched_dir, "scheduler_config.json")):
        name = _read_json(d / cfg_name).get("_class_name")
        cls = getattr(diffusers, name, None) if isinstance(name, str) else None
        if cls is None:
            raise ValueError(
                f"{d / cfg_name}: _class_name {name!r} is not a class in diffusers {diffusers.__version__}"
            )
        classes[cfg_name] = cls
    model = classes["config.json"].from_pretrained(model_dir, local_files_only=True)
    scheduler = classes["scheduler_config.json"].from_pretrained(sched_dir, local_files_only=True)
    den = from_diffusers(model, scheduler, **kw)
    den.card = den.card.with_provenance(path=str(model_dir))
    return den
