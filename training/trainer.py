"""The training loop behind ``lsms-train``: one process, or many under ``torchrun`` (DDP).

Per epoch: shuffled batches (a seeded DistributedSampler order), focal + boundary-weighted dice
+ alpha x contrastive loss, AdamW with poly decay per iteration; then validation (mean
per-image Dice / IoU at each image's own size) and self-describing ``best`` / ``last``
checkpoints, a resumable state and one JSON line in ``log.jsonl``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from lsms_core.checkpoint import read_checkpoint, save_checkpoint
from lsms_core.config import LSMSConfig, PreprocessConfig, TextEncoderConfig, preset
from lsms_core.device import autocast, autocast_dtype, resolve_device
from lsms_core.domain import domain_of_checkpoint, domain_of_training
from lsms_core.losses import LossConfig, LSMSLoss
from lsms_core.metrics import Scores
from lsms_core.referring import ReferringScores, referring_instances, score_referring
from lsms_core.allocator import reuse_freed_memory
from lsms_core.model import build_model
from lsms_core.preprocessing import to_output_mask

from .config import TrainConfig
from .data import (ReferringSamples, TextFeatureCache, collate, epoch_order, grouped_epoch_order, normalise,
                   open_training_dataset)
from .state import Progress, read_state, restore_state, save_state

LOG_FILE = "log.jsonl"
MACHINE_SETTINGS = ("device", "workers")  # a resumed run takes these from its new command line, not its state
PROGRESS_EVERY = 100  # iterations between "progress" events when no progress bar is shown
RUN_FILES = ("best.safetensors", "last.safetensors", "train_state.safetensors", LOG_FILE)  # what a run writes
GROUNDING_FLAGS = ("position_encoding",)  # ModelConfig additions that start at zero
SELECTOR_FIELDS = ("select_lesions", "selector_hidden", "selector_features", "selector_kind", "selector_layers",
                   "selector_members", "selector_clusters", "selector_fallback")  # lsms-train-selector's part
_NORMS = (nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm, nn.SyncBatchNorm)


def poly_factor(iteration: int, total: int, power: float, warmup: int = 0) -> float:
    """Learning-rate multiplier: linear warm-up, then ``(1 - it/total)^power``."""
    if warmup and iteration < warmup:
        return (iteration + 1) / warmup
    return max(1.0 - iteration / max(total, 1), 0.0) ** power


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: weight decay everywhere except on normalisation layers' parameters."""
    no_decay = {id(p) for m in model.modules() if isinstance(m, _NORMS) for p in m.parameters(recurse=False)}
    decay = [p for p in model.parameters() if p.requires_grad and id(p) not in no_decay]
    plain = [p for p in model.parameters() if p.requires_grad and id(p) in no_decay]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


def adamw(groups: list[dict], lr: float) -> torch.optim.AdamW:
    """AdamW over parameter ``groups``, fused into one kernel per step where the parameters' device has one
    (CPU and CUDA in torch >= 2.4; on this CPU the step takes 11-14 ms instead of foreach's 31-44 ms for the
    lsms preset, docs/benchmarks.md), else the multi-tensor (foreach) implementation. Both keep the same
    state, so a run resumes with either (``training.state`` gives restored state its parameter's layout)."""
    try:
        return torch.optim.AdamW(groups, lr=lr, fused=True)
    except (RuntimeError, ValueError):  # a device or dtype without the fused kernel
        return torch.optim.AdamW(groups, lr=lr)


class Trainer:
    """Builds everything a run needs from a TrainConfig; ``run()`` trains to the end."""

    def __init__(self, config: TrainConfig, resume: bool = False, show_progress: bool = True,
                 overwrite: bool = False) -> None:
        config.validate()
        self.rank, self.world = _init_distributed()
        self.is_main = self.rank == 0
        self.output = Path(config.output)
        if not resume and not overwrite:
            earlier = [n for n in RUN_FILES if (self.output / n).exists()]
            if earlier:
                raise FileExistsError(f"{self.output} holds an earlier run ({', '.join(earlier)}): pass --resume to "
                                      "continue it, --overwrite to replace it, or another -o folder")
        if overwrite and not resume and self.is_main:
            for name in RUN_FILES:
                (self.output / name).unlink(missing_ok=True)
        resumed = read_state(self.output) if resume else None
        if resumed is not None:
            stored = TrainConfig.from_json(resumed[1]["config"])
            changed = stored.differences(config, ignore=MACHINE_SETTINGS)
            if changed and self.is_main:
                print(f"lsms-train: resuming with the stored settings; ignoring {sorted(changed)}")
            config = TrainConfig(**{**stored.__dict__, **{k: getattr(config, k) for k in MACHINE_SETTINGS}})
        self.config = config
        self.show_progress = show_progress and self.is_main
        self.device = resolve_device(config.device)
        if self.device.type == "cpu":
            reuse_freed_memory()  # lsms_core/allocator.py: no page faults on every step's activations
        if self.world > 1 and self.device.type == "cuda":
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(self.device)
        torch.manual_seed(config.seed)
        np.random.seed(config.seed)

        self.prep = PreprocessConfig(image_size=config.image_size, window_center=config.window_center,
                                     window_width=config.window_width).validate()
        self.notes: list[str] = []  # said on stderr now and logged ("note" events) when the run starts
        # The init checkpoint, read once (its weights start the run; a resumed run takes them from its state).
        self.init_checkpoint = read_checkpoint(config.init_checkpoint) if config.init_checkpoint else None
        self.keeps_selector = self._keeps_selector(config)
        finder = self.keeps_selector
        datasets = [open_training_dataset(path) for path in (config.dataset, *config.mix)]
        kinds = () if finder else tuple(config.expression_kinds)
        self.train_samples = ReferringSamples(datasets, config.train_split, self.prep, config.augment, config.seed,
                                              kinds=kinds, finder=finder, vertical_flips=config.vertical_flips,
                                              neutral_share=config.neutral_share)
        with_val = [d for d in datasets if any(not kinds or set(r.get("expression_kinds") or ()) & set(kinds)
                                               for r in d.select(config.val_split))]
        self.val_samples = (ReferringSamples(with_val, config.val_split, self.prep, kinds=kinds, finder=finder)
                            if with_val else None)
        # A finder's samples say "all lesions": no referring case among them.
        self.val_cases = self._referring_cases(self.val_samples) if self.val_samples is not None and not finder else {}
        if self.val_samples is None:
            self._note(no_validation_note(config))
        self.slices = self.train_samples.slice_groups() if config.same_slice > 1 else None
        inherited = (domain_of_checkpoint(self.init_checkpoint.config, self.init_checkpoint.extra)
                     if self.init_checkpoint is not None else None)  # a fine-tuned model keeps its region
        self.domain = domain_of_training(self.train_samples.records, self.prep, inherited)  # what checkpoints state

        self.text_encoder, self.text_cache = self._build_text(config)
        text_config = self.text_encoder.config if self.text_encoder is not None else TextEncoderConfig()
        # A text-free model never reads text_dim; keep the default encoder's for a uniform config.
        text_dim = self.text_encoder.hidden_size if self.text_encoder is not None else 384
        model_config = preset(config.preset, use_text=config.use_text, text_dim=text_dim)
        if self.keeps_selector:
            model_config = dataclasses.replace(model_config, **{
                name: getattr(self.init_checkpoint.config.model, name) for name in SELECTOR_FIELDS}).validate()
        preset_name = config.preset + ("+select" if model_config.select_lesions else "")
        self.lsms_config = LSMSConfig(model=model_config, text=text_config, preprocess=self.prep, preset=preset_name)
        self.model = build_model(model_config)
        if config.init_mscan:
            from lsms_core.mscan_import import import_mscan

            report = import_mscan(self.model, config.init_mscan)
            if self.is_main:
                print(f"lsms-train: MSCAN weights: {report.summary()}")
        if self.init_checkpoint is not None and resumed is None:
            self._load_initial_weights(self.init_checkpoint)
        if resumed is not None:
            self.model.load_state_dict({k[6:]: v for k, v in resumed[0].items() if k.startswith("model.")})
            if self.text_encoder is not None and not self.text_encoder.frozen:
                self.text_encoder.load_state_dict({k[5:]: v for k, v in resumed[0].items() if k.startswith("text.")},
                                                  strict=False)
        if self.model.selector is not None:  # kept from the init checkpoint: frozen, the LSMS trains
            self.model.selector.requires_grad_(False)
        self.model.to(self.device)
        if config.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.net: nn.Module = self.model
        if self.world > 1:
            if self.device.type == "cuda":
                self.net = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
            # On CPU, SyncBatchNorm is unavailable: each rank keeps its own batch statistics and
            # DDP broadcasts rank 0's running statistics every forward, so the ranks stay equal.
            self.net = nn.parallel.DistributedDataParallel(
                self.net, device_ids=[self.device.index] if self.device.type == "cuda" else None)

        groups = parameter_groups(self.model, config.weight_decay)
        if self.text_encoder is not None and not self.text_encoder.frozen:
            text_params = [p for p in self.text_encoder.parameters() if p.requires_grad]
            groups.append({"params": text_params, "weight_decay": config.weight_decay, "lr": config.text_lr or config.lr})
        for group in groups:
            group.setdefault("lr", config.lr)
            group["initial_lr"] = group["lr"]
        self.optimizer = adamw(groups, config.lr)
        self.loss = LSMSLoss(LossConfig(contrastive_weight=config.contrastive_weight if config.use_text else 0.0,
                                        boundary_weight=config.boundary_weight, temperature=config.temperature))
        amp_dtype = autocast_dtype(self.device) if config.amp else None
        self.scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
        self.use_amp = amp_dtype is not None

        self.batches_per_epoch = math.ceil(math.ceil(len(self.train_samples) / self.world) / config.batch_size)
        self.total_iterations = self.batches_per_epoch * config.epochs
        self.progress = Progress()
        if resumed is not None:
            self.progress = restore_state(*resumed, self.optimizer, self.scaler)
        if self.is_main:
            self.output.mkdir(parents=True, exist_ok=True)

    # --- set-up helpers ---------------------------------------------------------------------
    def _build_text(self, config: TrainConfig):
        if not config.use_text:
            return None, None
        from lsms_core.text_encoder import TextEncoder

        encoder = TextEncoder(TextEncoderConfig(path=config.text_encoder, max_tokens=config.max_tokens,
                                                train_layers=tuple(config.train_text_layers),
                                                name=config.text_encoder_name or (
                                                    Path(config.text_encoder).name if config.text_encoder
                                                    else TextEncoderConfig().name)))
        if encoder.frozen:
            cache = TextFeatureCache(encoder)
            texts = [r["text"] for r in self.train_samples.records]
            if self.val_samples is not None:
                texts += [r["text"] for r in self.val_samples.records]
            cache.prefill(texts)
            return encoder, cache
        return encoder.to(self.device), None

    def _keeps_selector(self, config: TrainConfig) -> bool:
        """Whether this run keeps the init checkpoint's lesion selector (frozen) and trains the LSMS as its
        finder. Kept only where it reads geometry alone: the decoder features an "all" selector reads
        change as the LSMS trains, so that one is left out (with a note)."""
        checkpoint = self.init_checkpoint
        if checkpoint is None or not checkpoint.config.model.select_lesions or not config.keep_selector:
            return False
        if checkpoint.config.model.selector_features != "geometry":
            self._note(f"{checkpoint.path.name}'s lesion selector reads the decoder's features, which this run "
                       "changes: it is left out (train a new one with lsms-train-selector)")
            return False
        self._note(f"keeping {checkpoint.path.name}'s lesion selector unchanged; the LSMS trains as its lesion "
                   "finder on each slice's 'all lesions' (the union of its masks); --drop-selector trains it on "
                   "the expressions instead")
        return True

    def _load_initial_weights(self, checkpoint) -> None:
        """Start from a checkpoint of the same architecture; only the zero-initialised layers a preset
        may add to it (position encoding) may be missing. Its lesion selector is kept frozen where
        ``_keeps_selector`` says so, else left out (add one again with lsms-train-selector)."""
        from lsms_core.checkpoint import CheckpointError

        additions = dict.fromkeys(GROUNDING_FLAGS + SELECTOR_FIELDS)
        mine = {**vars(self.lsms_config.model), **additions}
        theirs = {**vars(checkpoint.config.model), **additions}
        if mine != theirs:
            changed = sorted(k for k in mine if mine[k] != theirs[k])
            theirs_name = checkpoint.config.preset.removesuffix("+select")
            raise CheckpointError(f"--init-checkpoint {checkpoint.path}: its architecture differs from preset "
                                  f"{self.config.preset} in {changed}; use --preset {theirs_name}")
        if checkpoint.config.text.name != self.lsms_config.text.name:
            raise CheckpointError(f"--init-checkpoint {checkpoint.path} was trained with text encoder "
                                  f"{checkpoint.config.text.name!r}, this run uses {self.lsms_config.text.name!r}")
        state = {k: v for k, v in checkpoint.model_state.items()
                 if self.keeps_selector or not k.startswith("selector.")}
        result = self.model.load_state_dict(state, strict=False)
        missing = [k for k in result.missing_keys if ".pos_embed" not in f".{k}"]
        if missing or result.unexpected_keys:
            raise CheckpointError(f"--init-checkpoint {checkpoint.path}: weights do not fit (missing {missing[:5]}, "
                                  f"unexpected {result.unexpected_keys[:5]})")
        if self.is_main:
            dropped = " without its lesion selector" if len(state) < len(checkpoint.model_state) else ""
            print(f"lsms-train: starting from {checkpoint.path.name} ({checkpoint.identity['name']}){dropped}")

    def _note(self, message: str) -> None:
        """Say ``message`` on stderr now (main process) and log it as a "note" event when the run starts."""
        self.notes.append(message)
        if self.is_main:
            print(f"lsms-train: note: {message}", file=sys.stderr, flush=True)

    def _words(self, texts: list[str]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if self.text_encoder is None:
            return None, None
        if self.text_cache is not None:
            words, mask = self.text_cache.batch(texts)
            return words.to(self.device), mask.to(self.device)
        return self.text_encoder.encode(texts, self.device)

    def _log(self, record: dict) -> None:
        if self.is_main:
            with open(self.output / LOG_FILE, "a") as handle:
                handle.write(json.dumps(record, sort_keys=True) + "\n")

    # --- the loop -----------------------------------------------------------------------------
    def run(self) -> dict:
        cfg = self.config
        if self.progress.iteration == 0:
            self._log({"event": "start", "epochs": cfg.epochs, "iterations": self.total_iterations,
                       "batches_per_epoch": self.batches_per_epoch, "train_samples": len(self.train_samples),
                       "val_samples": len(self.val_samples) if self.val_samples else 0, "world_size": self.world,
                       "device": str(self.device), "config": json.loads(cfg.to_json()), "time": time.time()})
        else:
            self._log({"event": "resume", "epoch": self.progress.epoch, "iteration": self.progress.iteration,
                       "time": time.time()})
        for note in self.notes:
            self._log({"event": "note", "message": note, "time": time.time()})
        while self.progress.epoch < cfg.epochs:
            self._train_epoch(self.progress.epoch)
        validated = self.val_samples is not None
        summary = {"event": "end", "best_dice": self.progress.best_dice if validated else None,
                   "best_epoch": self.progress.best_epoch, "best_by": "validation" if validated else "training loss",
                   "iterations": self.progress.iteration, "seconds": round(self.progress.seconds, 1),
                   "time": time.time()}
        if not validated:
            summary["best_train_loss"] = -self.progress.best_dice
        if self.world > 1:
            summary["rank_checksums"] = self._rank_checksums()
        self._log(summary)
        _barrier(self.world)
        return summary

    def _train_epoch(self, epoch: int) -> None:
        cfg = self.config
        self.train_samples.epoch = epoch
        if self.slices is not None:
            order = grouped_epoch_order(self.slices, cfg.same_slice, cfg.batch_size, epoch, cfg.seed, self.rank,
                                        self.world)
        else:
            order = epoch_order(len(self.train_samples), epoch, cfg.seed, self.rank, self.world)
        batches = [order[i:i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]
        skip = self.progress.step_in_epoch
        self.net.train()
        if self.text_encoder is not None:
            self.text_encoder.train()
        totals: dict[str, float] = {}
        seen, start = 0, time.perf_counter()
        bar = None
        if self.show_progress:
            from tqdm import tqdm

            bar = tqdm(total=len(batches), initial=skip, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch",
                       dynamic_ncols=True, disable=None)  # None: off when stderr is not a terminal
        for batch_indices, samples in zip(batches[skip:], self._load(batches[skip:])):
            terms = self._step(samples)
            seen += len(batch_indices)
            for name, value in terms.items():
                totals[name] = totals.get(name, 0.0) + value * len(batch_indices)
            self.progress.step_in_epoch += 1
            self.progress.iteration += 1
            if bar is not None and not bar.disable:
                rate = seen * self.world / max(time.perf_counter() - start, 1e-9)
                bar.set_postfix(loss=f"{terms['total']:.4f}", img_s=f"{rate:.1f}",
                                lr=f"{self.optimizer.param_groups[0]['lr']:.2e}")
                bar.update(1)
            elif self.is_main and self.progress.iteration % PROGRESS_EVERY == 0:  # no terminal: the log says it
                self._say_progress(epoch, seen, time.perf_counter() - start)
            if cfg.save_every_steps and self.progress.iteration % cfg.save_every_steps == 0:
                self._save_state()
        if bar is not None:
            bar.close()
        elapsed = time.perf_counter() - start
        self.progress.seconds += elapsed
        record = {"event": "epoch", "epoch": epoch + 1, "epochs": cfg.epochs, "iteration": self.progress.iteration,
                  "iterations": self.total_iterations, "lr": self.optimizer.param_groups[0]["lr"],
                  "images_per_s": round(seen * self.world / max(elapsed, 1e-9), 2),
                  "seconds": round(self.progress.seconds, 1), "time": time.time()}
        record.update({f"train_{k}": round(v / max(seen, 1), 5) for k, v in totals.items()})
        scores, referring = self.validate() if self.val_samples is not None and self.is_main else (None, None)
        if scores is not None:
            record.update(val_dice=round(scores.dice, 5), val_miou=round(scores.miou, 5), val_n=scores.n)
            record.update({f"val_{k}": round(v, 5) if isinstance(v, float) else v
                           for k, v in referring.summary().items()})  # None without referring cases
        self.progress.epoch = epoch + 1
        self.progress.step_in_epoch = 0
        self.progress.history.append({k: record[k] for k in ("epoch", "iteration") if k in record})
        if self.is_main:
            # Without a validation split the lowest mean training loss picks best.safetensors (score = -loss,
            # below the initial -1 whenever the loss is above 1: the first epoch always counts).
            score = selection_score(scores, referring) if scores is not None else -float(record.get("train_total", 0.0))
            if self.progress.best_epoch < 0 or score > self.progress.best_dice:
                self.progress.best_dice, self.progress.best_epoch = score, epoch + 1
                self._save_checkpoint("best.safetensors", epoch + 1, scores)
            self._save_checkpoint("last.safetensors", epoch + 1, scores)
        self._save_state()
        self._log(record)

    def _load(self, batches: list[list[int]]):
        """The samples of ``batches``, in order: read and augmented here, or by ``config.workers`` processes
        ahead of the model (each keeps its own cache; samples are a function of (seed, epoch, index), so both
        ways give the same batches)."""
        if not self.config.workers or not batches:
            return ([self.train_samples[i] for i in batch] for batch in batches)
        # Its own generator: the workers' seeds must not be drawn from the global one the model's dropout uses.
        loader = torch.utils.data.DataLoader(self.train_samples, batch_sampler=batches, collate_fn=list,
                                             num_workers=self.config.workers, prefetch_factor=4,
                                             generator=torch.Generator().manual_seed(self.config.seed))
        return iter(loader)

    def _say_progress(self, epoch: int, seen: int, elapsed: float) -> None:
        """Without a terminal (a run in the background, the widget's Train): one line on stderr and a "progress"
        event in the log with samples/s of this epoch so far and the time left for the whole run."""
        rate = seen * self.world / max(elapsed, 1e-9)
        samples_left = (self.total_iterations - self.progress.iteration) * self.config.batch_size * self.world
        left = samples_left / max(rate, 1e-9)
        record = {"event": "progress", "epoch": epoch + 1, "iteration": self.progress.iteration,
                  "iterations": self.total_iterations, "images_per_s": round(rate, 2), "eta_s": round(left),
                  "time": time.time()}
        if self.show_progress:  # not under --no-progress (the widget reads the log, and stderr for errors)
            print(f"lsms-train: epoch {epoch + 1}/{self.config.epochs}, iteration {self.progress.iteration}/"
                  f"{self.total_iterations}, {rate:.1f} samples/s, about {format_duration(left)} left (training only)",
                  file=sys.stderr, flush=True)
        self._log(record)

    def _step(self, samples) -> dict[str, float]:
        batch = collate(samples)
        factor = poly_factor(self.progress.iteration, self.total_iterations, self.config.poly_power,
                             self.config.warmup_iters)
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor
        image = normalise(batch["grey"].to(self.device), self.prep)
        target = batch["target"].to(self.device)
        if self.config.channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        words, mask = self._words(batch["text"])
        with autocast(self.device) if self.use_amp else nullcontext():
            output = self.net(image, words, mask, features=True)
        terms = self.loss(output, target)
        if not torch.isfinite(terms["total"]):
            raise TrainingDiverged(
                f"lsms-train stopped at iteration {self.progress.iteration + 1}: the loss is {float(terms['total'].detach())} "
                f"({', '.join(f'{k} {float(v):.4g}' for k, v in terms.items() if k != 'total')}). Lower --lr "
                f"(now {self.config.lr:g}) or check --temperature and --window; the last finite checkpoints are kept")
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(terms["total"]).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            terms["total"].backward()
            self.optimizer.step()
        return {k: float(v.detach()) for k, v in terms.items()}

    def _rank_checksums(self) -> list[float]:
        """Sum of every weight on each rank: equal lists prove the replicas stayed identical."""
        local = torch.tensor([sum(float(p.detach().double().sum()) for p in self.model.parameters())],
                             dtype=torch.float64, device=self.device)
        gathered = [torch.zeros_like(local) for _ in range(self.world)]
        dist.all_gather(gathered, local)
        return [float(g.item()) for g in gathered]

    @staticmethod
    def _referring_cases(samples: ReferringSamples) -> dict[int, tuple[np.ndarray, int]]:
        """Sample index -> (instance map, named instance) for the referring cases among ``samples``."""
        cases = {}
        for number, dataset in enumerate(samples.datasets):
            indices = [i for i, s in enumerate(samples.record_source) if s == number]
            found = referring_instances([samples.records[i] for i in indices], dataset.read_mask)
            cases.update({i: found[samples.records[i]["id"]] for i in indices if samples.records[i]["id"] in found})
        return cases

    @torch.no_grad()
    def validate(self, batch_size: int | None = None) -> tuple[Scores, ReferringScores]:
        """Mean per-image Dice / IoU on the validation split, each mask at its image's size, and the
        referring figures (hit rate, pointing, leak) of its referring cases."""
        self.model.eval()
        samples = self.val_samples
        scores, referring = Scores(), ReferringScores()
        step = batch_size or self.config.batch_size
        for start in range(0, len(samples), step):
            indices = list(range(start, min(start + step, len(samples))))
            grey = torch.stack([samples.grey(samples.records[i], i) for i in indices]).to(self.device)
            words, mask = self._words([samples.records[i]["text"] for i in indices])
            with autocast(self.device) if self.use_amp else nullcontext():
                logits = self.model(normalise(grey, self.prep), words, mask)
            for row, i in enumerate(indices):
                truth = samples.read_mask(i)
                prediction, _ = to_output_mask(logits[row], truth.shape)
                scores.add(prediction, truth)
                if i in self.val_cases:
                    referring.add(score_referring(prediction, *self.val_cases[i]))
        self.model.train()
        return scores, referring

    # --- saving -------------------------------------------------------------------------------
    def _save_checkpoint(self, name: str, epoch: int, scores: Scores | None) -> None:
        if not all(torch.isfinite(p).all() for p in self.model.state_dict().values() if p.is_floating_point()):
            raise TrainingDiverged(f"lsms-train: the weights hold NaN or infinite values after epoch {epoch}; "
                                   f"{name} was not written. Lower --lr (now {self.config.lr:g})")
        extra = {"name": self.config.model_name, "epoch": epoch, "iteration": self.progress.iteration,
                 "train_config": json.loads(self.config.to_json()),
                 "val": scores.summary() if scores is not None else None,
                 "best_by": "validation" if scores is not None else "training loss",
                 "domain": self.domain.to_record()}
        save_checkpoint(self.output / name, self.model, self.lsms_config, self.text_encoder, extra,
                        half=self.config.half_checkpoints)

    def _save_state(self) -> None:
        """Resumable state + weights (rank 0 writes; every rank waits for it)."""
        if self.is_main:
            weights = {f"model.{k}": v for k, v in self.model.state_dict().items()}
            if self.text_encoder is not None and not self.text_encoder.frozen:
                weights.update({f"text.{n}": p for n, p in self.text_encoder.named_parameters() if p.requires_grad})
            save_state(self.output, self.optimizer, self.progress, self.config.to_json(), self.scaler, weights)
        _barrier(self.world)


def no_validation_note(config: TrainConfig) -> str:
    """What lsms-train says when the validation split is empty: it trains anyway and how it picks."""
    kinds = f" of kinds {', '.join(config.expression_kinds)}" if config.expression_kinds else ""
    return (f"no validation possible: split {config.val_split!r} has no annotations{kinds}; training on split "
            f"{config.train_split!r} anyway, and best.safetensors is the epoch with the lowest training loss (not a "
            "measure of how well it generalises). To validate, annotate more patients (each new patient's split "
            "is drawn by dataset.json's split_fractions) or move one patient's group to val with "
            "'lsms-data set-split DATASET GROUP val'")


class TrainingDiverged(RuntimeError):
    """The loss or the weights became NaN or infinite; nothing non-finite is saved."""


def selection_score(scores: Scores, referring: ReferringScores) -> float:
    """What picks ``best.safetensors``: validation Dice, plus the hit rate where the validation
    split has referring cases (a model that marks every lesion must not win on Dice alone)."""
    summary = referring.summary()
    return scores.dice + (summary["hit_rate"] if summary["n_referring"] else 0.0)


def _init_distributed() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def format_duration(seconds: float) -> str:
    """``1 h 05 min`` or ``7 min`` (rounded to minutes; under a minute: ``< 1 min``)."""
    minutes = int(round(seconds / 60))
    if minutes < 1:
        return "< 1 min"
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"


def _barrier(world: int) -> None:
    if world > 1 and dist.is_initialized():
        dist.barrier()
