"""The model registry: discovery (offline), lazy loading, and a memory budget with LRU unloading.

Sources, in order: built-in tiny models (built in code on first use and cached as ordinary
diffusers folders), diffusers folders and single-file checkpoints under `--models DIR` /
`$CINEGEN_MODELS`, and the local Hugging Face cache. Nothing is ever downloaded.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path

import torch

from ..errors import FailedPrecondition, NotFound, ResourceExhausted
from .families import all_families
from .checkpoint_kinds import classify_file
from .family import AddOn, Family, FamilyAdapter, ModelEntry, TinyModel
from .folder_check import is_cut_short, missing_parts, model_folder_missing, read_index
from .sparsectrl import SPARSECTRL_CLASS, SPARSECTRL_KIND, is_sparsectrl_folder
from .precision import device_supports_bf16, dtype_for
from .speedups import Speedups

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    root = os.environ.get("CINEGEN_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "cinegen")
    return Path(root)


def ensure_tiny_model(tiny: TinyModel, cache_dir: Path) -> Path:
    """Build a tiny model into the cache once; later calls reuse the folder."""
    folder = cache_dir / "tiny" / f"{tiny.id}-v{tiny.version}"
    if (folder / "model_index.json").exists():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{tiny.id}-", dir=folder.parent))
    try:
        tiny.build(tmp)
        try:
            os.replace(tmp, folder)  # atomic: a half-built model is never visible
        except OSError:
            if not (folder / "model_index.json").exists():  # lost a race to another process: fine
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def quiet_library_progress() -> None:
    """Loading bars of diffusers/transformers/hub would garble our own progress output."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        import diffusers
        import huggingface_hub
        import transformers

        diffusers.utils.logging.disable_progress_bar()
        transformers.utils.logging.disable_progress_bar()
        huggingface_hub.utils.disable_progress_bars()
    except (ImportError, AttributeError):
        pass


def _model_index_class(folder: Path) -> str | None:
    return read_index(folder).get("_class_name")  # {} for a missing, unreadable or non-object file


def _folder_kind(folder: Path) -> str:
    """`sdxl-refiner` for an SDXL refiner folder (it runs only as --refiner), else `model`."""
    return "sdxl-refiner" if _model_index_class(folder) == "StableDiffusionXLImg2ImgPipeline" else "model"


def _config_class(folder: Path) -> str | None:
    """The `_class_name` of a single-model diffusers folder (config.json), e.g. MotionAdapter."""
    try:
        return json.loads((folder / "config.json").read_text()).get("_class_name")
    except (OSError, ValueError, AttributeError):
        return None


PICKLED = (".ckpt", ".pt", ".pth")  # a single-file checkpoint saved with pickle
MAX_DEPTH = 3  # DIR/group/subgroup/model: a studio's folder of folders of models, not a model's own parts
MODEL_CONFIGS = ("model_index.json", "config.json")


def _walk(root: Path) -> tuple[list[Path], list[Path]]:
    """(model folders, folders that may hold single files): `root` itself, and below it every folder
    that is a diffusers model (not descended into), through group folders (neither) up to MAX_DEPTH."""
    candidates, groups = [root], [root]
    level = [root] if not any((root / c).is_file() for c in MODEL_CONFIGS) else []
    for _depth in range(MAX_DEPTH):
        below = []
        for group in level:
            try:
                children = sorted(p for p in group.iterdir() if p.is_dir())
            except OSError as exc:
                log.warning("models folder %s cannot be read (%s); skipped", group, exc.strerror or exc)
                continue
            for child in children:
                if not _utf8(child):
                    continue
                if child.name.startswith((".", "__")) or (  # `x.config/` beside `x.safetensors`: its config
                        child.suffix == ".config" and child.with_suffix(".safetensors").is_file()):
                    continue
                if any((child / c).is_file() for c in MODEL_CONFIGS):
                    candidates.append(child)
                elif child.name.startswith("models--") and (child / "snapshots").is_dir():
                    log.warning("%s is a Hugging Face cache repository; point $HF_HUB_CACHE at its parent "
                                "folder instead of --models; skipped", child)
                else:
                    groups.append(child)
                    below.append(child)
        level = below
    return candidates, groups


def _warn_incomplete(folder: Path) -> None:
    missing = missing_parts(folder)
    if missing:
        log.warning("%s is incomplete (%s); listed, and refused at Submit until its files are fetched",
                    folder, "; ".join(missing[:3]))


def _utf8(path: Path) -> bool:
    """Ids and paths travel as proto strings (UTF-8): a name in another encoding (a folder copied from an
    old share) would break the whole model list, so it is skipped, with a line saying so."""
    try:
        str(path).encode("utf-8")
        return True
    except UnicodeEncodeError:
        log.warning("%s is named in an encoding other than UTF-8; rename it to list it; skipped",
                    str(path).encode("utf-8", "backslashreplace").decode())
        return False


def _id(root: Path, path: Path) -> str:
    """A model's id: its folder's name at the top of a --models folder, its path below it when nested."""
    rel = path.relative_to(root)
    return path.name if len(rel.parts) <= 1 else rel.as_posix()


def _unusable(folder: Path, family: str | None, families: dict) -> str:
    """Why a diffusers folder is not offered ("" when it is, or when it is not a pipeline folder)."""
    if not (folder / "model_index.json").is_file():
        return ""
    index = read_index(folder)
    if not index:
        return "has a model_index.json that cannot be read (a download that did not finish?)"
    if not family:
        served = sorted(c for fam in families.values() for c in fam.pipeline_classes)
        return (f"is a {index.get('_class_name') or 'pipeline'} folder, which cinegen does not run "
                f"(it runs {', '.join(served)})")
    try:
        unet = json.loads((folder / "unet" / "config.json").read_text())["in_channels"]
        latent = json.loads((folder / "vae" / "config.json").read_text())["latent_channels"]
    except (OSError, ValueError, KeyError, TypeError):
        return ""
    if unet > latent:  # inpainting (9 = latents + mask + masked image), depth or pix2pix (8)
        return (f"has a UNet of {unet} input channels for {latent}-channel latents (an inpainting, depth or "
                "instruct model); cinegen's pipelines run text-to-image UNets")
    if unet != latent:  # a VAE of another model family dropped in (SD3/Flux: 16 channels)
        return f"has a VAE of {latent}-channel latents for a UNet of {unet} input channels: the VAE is another model's"
    return ""


def _motion_fits(adapter: Path, base: Path) -> bool:
    """A MotionAdapter fits a base UNet with the same block widths (unreadable configs: offered anyway)."""
    try:
        widths = json.loads((adapter / "config.json").read_text())["block_out_channels"]
        return list(widths) == list(json.loads((base / "unet" / "config.json").read_text())["block_out_channels"])
    except (OSError, ValueError, KeyError, TypeError):
        return True


class _DiscoveryNotes(logging.Handler):
    """The warnings discovery logs (what is skipped and why, what is incomplete), kept for clients: a TD
    whose model is missing from `cinegen models` reads why there, not only in the server's log."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.thread = threading.get_ident()  # another thread's log lines (a load failing) are not discovery's
        self.notes: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread:
            self.notes.append(record.getMessage())


class ModelRegistry:
    def __init__(self, models_dirs: list[Path] | None = None, *, device: torch.device | str = "cpu",
                 dtype: torch.dtype | None = None, memory_budget: int | None = None,
                 cache_dir: Path | None = None, use_hf_cache: bool = True, speedups: Speedups | None = None):
        self.device = torch.device(device)
        self.speedups = speedups or Speedups()  # channels-last / torch.compile on each denoiser loaded
        self.dtype = dtype  # None: each family's own (precision.dtype_for); set: every model in it
        self.bf16_supported = device_supports_bf16(self.device)
        self.cache_dir = cache_dir or default_cache_dir()
        self.models_dirs = [Path(p) for p in (models_dirs or [])]
        env = os.environ.get("CINEGEN_MODELS")
        if env:
            self.models_dirs += [Path(p) for p in env.split(os.pathsep) if p]
        # `~` is left as it is by an env file or a quoted shell word; paths go to clients on other machines whole
        self.models_dirs = [p.expanduser().absolute() for p in self.models_dirs]
        self.use_hf_cache = use_hf_cache
        self.memory_budget = memory_budget if memory_budget is not None else _default_budget(self.device)
        self.families: dict[str, Family] = all_families()
        quiet_library_progress()
        self._loaded: OrderedDict[str, FamilyAdapter] = OrderedDict()
        self._lock = threading.RLock()
        self._entries: dict[str, ModelEntry] | None = None
        self._addons: list[AddOn] = []
        self._notes: list[str] = []  # what the last discovery logged (`discovery_notes`)

    # ---- discovery ------------------------------------------------------------------------
    def entries(self) -> list[ModelEntry]:
        with self._lock:
            if self._entries is None:
                self._addons = []
                self._entries = {}
                notes = _DiscoveryNotes()
                log.addHandler(notes)
                try:
                    for e in self._discover():
                        if e.id in self._entries:  # the later one is offered, as before; say which is hidden
                            log.warning("two models are named '%s': %s is offered, %s is hidden (rename one)",
                                        e.id, e.path, self._entries[e.id].path or "the built-in one")
                        self._entries[e.id] = e
                finally:
                    log.removeHandler(notes)
                self._notes = notes.notes
            return list(self._entries.values())

    def discovery_notes(self) -> list[str]:
        """What discovery said about the model folders: skipped folders and files with the reason,
        incomplete models, hidden duplicates (the same sentences as the server's log)."""
        self.entries()
        return list(self._notes)

    def refresh(self) -> None:
        with self._lock:
            self._entries = None

    def _discover(self) -> list[ModelEntry]:
        found: list[ModelEntry] = []
        for fam in self.families.values():
            for tiny in fam.tiny:
                found.append(ModelEntry(tiny.id, fam.name, "builtin", "", tiny.description))
        for root in self.models_dirs:
            found += self._discover_folder(root)
        if self.use_hf_cache:
            found += self._discover_hf_cache()
        return found

    def family_of_class(self, class_name: str | None) -> str | None:
        for fam in self.families.values():
            if class_name in fam.pipeline_classes:
                return fam.name
        return None

    def _discover_folder(self, root: Path) -> list[ModelEntry]:
        out: list[ModelEntry] = []
        if root.is_file():
            log.warning("--models takes folders; %s is a file: give the folder that holds it (%s)", root, root.parent)
            return out
        if not root.is_dir():
            log.warning("models folder %s does not exist", root)
            return out
        candidates, groups = _walk(root)
        ids = {folder: _id(root, folder) for folder in candidates}
        for folder in candidates:
            family = self.family_of_class(_model_index_class(folder))
            why_not = _unusable(folder, family, self.families)
            if family and not why_not:
                out.append(ModelEntry(ids[folder], family, "folder", str(folder), kind=_folder_kind(folder)))
                _warn_incomplete(folder)
            elif why_not:
                log.warning("%s %s; skipped", folder, why_not)
            elif _config_class(folder) not in (None, "MotionAdapter", SPARSECTRL_CLASS):
                log.warning("%s holds one part of a model (%s), not a whole diffusers pipeline "
                            "(model_index.json and its parts); skipped", folder, _config_class(folder))
        out += self._paired_animatediff([f for f in candidates if not _unusable(f, "sd", self.families)], ids)
        # SparseCtrl RGB encoders (diffusers folders) condition AnimateDiff (SD 1.x) on keyframes: add-ons
        self._addons += [AddOn(ids[f], SPARSECTRL_KIND, "sd1", str(f)) for f in candidates if is_sparsectrl_folder(f)]
        single = [f for f in self.families.values() if f.single_file]
        for group in groups:
            for ckpt in sorted(f for f in group.glob("*.safetensors") if _utf8(f)):
                kind = classify_file(ckpt)  # from the tensor names, never the file name
                name = _id(root, ckpt.with_suffix("")) if group != root else ckpt.stem
                if kind.is_checkpoint and single:
                    out.append(ModelEntry(name, single[0].name, "single-file", str(ckpt),
                                          f"{kind.kind} checkpoint ({kind.why})", kind=kind.kind))
                elif kind.is_addon:
                    self._addons.append(AddOn(name, kind.kind, kind.base, str(ckpt)))
                else:
                    log.warning("%s is not a model or add-on cinegen knows (%s); skipped", ckpt, kind.why)
            for pickled in sorted(p for p in group.glob("*.*") if p.suffix in PICKLED and p.is_file()):
                log.warning("%s is a pickled file; cinegen reads .safetensors files only (they cannot run code "
                            "when opened): if it is a checkpoint cinegen runs, convert it once (e.g. diffusers' "
                            "from_single_file, then save_pretrained) and put the result under --models; skipped",
                            pickled)
        return out

    def _paired_animatediff(self, folders: list[Path], ids: dict[Path, str]) -> list[ModelEntry]:
        """AnimateDiff as it ships: an SD 1.x (or SDXL) folder + a MotionAdapter folder. Each motion adapter
        is paired with every base whose UNet it fits (same block widths: SD 1.5 adapters have four blocks,
        SDXL ones three), as `BASE+MOTION`; with several bases every fitting pair is offered, so a request
        names the one it wants. An SDXL pair runs through AnimateDiffSDXLPipeline."""
        if "animatediff" not in self.families:
            return []
        motion = [f for f in folders if _config_class(f) == "MotionAdapter"]
        bases = [f for f in folders if _model_index_class(f) in ("StableDiffusionPipeline", "StableDiffusionXLPipeline")]
        pairs = [ModelEntry(f"{ids[base]}+{ids[adapter]}", "animatediff", "paired", str(base),
                            f"{ids[base]} with the motion adapter {ids[adapter]}"
                            + (" (AnimateDiff-SDXL)" if _model_index_class(base) == "StableDiffusionXLPipeline" else ""),
                            extra_path=str(adapter))
                 for adapter in motion for base in bases if _motion_fits(adapter, base)]
        for adapter in motion:
            if not any(p.extra_path == str(adapter) for p in pairs):
                log.warning("%s is a motion adapter, and no SD 1.5 or SDXL model beside it (under the same --models "
                            "folder, or in the HF cache) has a UNet it fits (same block widths); put its base "
                            "model beside it. Skipped", adapter)
        return pairs

    def addons(self) -> list[AddOn]:
        """LoRAs, motion modules, VAEs and embeddings found beside the models (after discovery)."""
        self.entries()
        return list(self._addons)

    def _discover_hf_cache(self) -> list[ModelEntry]:
        try:
            from huggingface_hub import constants, scan_cache_dir
            # named at call time: scan_cache_dir's own default is bound when its module is first imported
            info = scan_cache_dir(constants.HF_HUB_CACHE)
        except Exception:  # no cache folder yet, or an unreadable one: nothing to offer
            return []
        for problem in info.warnings:  # a repository the scan could not read: say so, it is not listed
            log.warning("Hugging Face cache: %s; skipped", problem)
        out = []
        ids: dict[Path, str] = {}  # snapshots of pipelines and of single models, for AnimateDiff pairs
        for repo in info.repos:
            if repo.repo_type != "model":
                continue
            # the snapshot `main` points at, unless a whole one is there and it is not: a later partial
            # download (one file of another revision) must not hide the model fetched before it
            revisions = sorted(repo.revisions, key=lambda r: (not missing_parts(Path(r.snapshot_path)),
                                                              "main" in r.refs, r.last_modified), reverse=True)
            single = next((Path(r.snapshot_path) for r in revisions  # a MotionAdapter or SparseCtrl repository
                           if _config_class(Path(r.snapshot_path)) in ("MotionAdapter", SPARSECTRL_CLASS)), None)
            if single is not None:
                ids[single] = repo.repo_id
                if is_sparsectrl_folder(single):
                    self._addons.append(AddOn(repo.repo_id, SPARSECTRL_KIND, "sd1", str(single)))
                continue
            for rev in revisions:
                snapshot = Path(rev.snapshot_path)
                family = self.family_of_class(_model_index_class(snapshot))
                why_not = _unusable(snapshot, family, self.families) if family else ""
                if why_not:  # an inpainting UNet under a text-to-image class
                    log.warning("Hugging Face cache: %s %s; skipped", repo.repo_id, why_not)
                    break
                if family:
                    out.append(ModelEntry(repo.repo_id, family, "hf-cache", str(snapshot), kind=_folder_kind(snapshot)))
                    _warn_incomplete(snapshot)
                    ids[snapshot] = repo.repo_id
                    break
            else:
                why_not = next((_unusable(Path(r.snapshot_path), None, self.families) for r in repo.revisions
                                if (Path(r.snapshot_path) / "model_index.json").is_file()), "")
                if why_not:  # a pipeline cinegen does not run (ControlNet, inpainting, SD3, ...): -v says so
                    log.info("Hugging Face cache: %s %s; not offered", repo.repo_id, why_not)
        return out + self._paired_animatediff(list(ids), ids)  # e.g. guoyww/animatediff-motion-adapter-v1-5-3

    def entry(self, model_id: str) -> ModelEntry:
        for e in self.entries():
            if e.id == model_id:
                return e
        known = ", ".join(e.id for e in self.entries())
        raise NotFound(f"There is no model '{model_id}'. Known models: {known}. "
                       "Put diffusers folders under --models DIR (or $CINEGEN_MODELS) and restart the server.")

    def default_model(self, families: tuple[str, ...] | list[str]) -> str:
        """The first real model of the wanted families, else the first tiny one."""
        entries = [e for e in self.entries() if e.family in families]
        real = [e for e in entries if e.source != "builtin"]
        pick = (real or entries)
        if not pick:
            raise FailedPrecondition(f"No model of family {' or '.join(families)} is available on this server.")
        return pick[0].id

    # ---- loading --------------------------------------------------------------------------
    def is_loaded(self, model_id: str) -> bool:
        return model_id in self._loaded

    def get(self, model_id: str) -> FamilyAdapter:
        with self._lock:
            if model_id in self._loaded:
                self._loaded.move_to_end(model_id)
                return self._loaded[model_id]
            entry = self.entry(model_id)
            adapter = self._load(entry)
            self.speedups.apply(adapter)
            self._loaded[model_id] = adapter
            self._enforce_budget(keep=model_id)
            return adapter

    def _load(self, entry: ModelEntry) -> FamilyAdapter:
        fam = self.families[entry.family]
        if entry.source == "builtin":
            tiny = next(t for t in fam.tiny if t.id == entry.id)
            entry = ModelEntry(entry.id, entry.family, "builtin", str(ensure_tiny_model(tiny, self.cache_dir)),
                               entry.description)
        if entry.source != "builtin":
            self.check_files(entry.id)
        log.info("loading %s (%s) from %s", entry.id, entry.family, entry.path)
        try:
            return fam.load(entry, self.device, self.dtype_of(entry.family))
        except torch.cuda.OutOfMemoryError as exc:  # type: ignore[attr-defined]
            raise ResourceExhausted(f"Model '{entry.id}' does not fit in GPU memory. Close other GPU programs, "
                                    "or lower --memory-budget so other models are unloaded first.") from exc
        except FailedPrecondition:
            raise
        except Exception as exc:  # noqa: BLE001 - a user's folder is input: a sentence naming it, never a traceback
            expected = isinstance(exc, (OSError, ValueError, KeyError))  # what a bad folder raises: no traceback
            log.warning("loading %s from %s failed: %s", entry.id, entry.path, exc, exc_info=not expected)
            raise FailedPrecondition(f"Model '{entry.id}' at {entry.path} could not be loaded ({exc}). "
                                     "Check that the folder is a complete diffusers model.") from exc

    def check_files(self, model_id: str) -> None:
        """FAILED_PRECONDITION naming what a model's folder lacks (a half-finished download), read from its
        files without loading them: Submit refuses the job instead of it failing when the model loads."""
        entry = self.entry(model_id)
        if entry.source == "single-file" and is_cut_short(Path(entry.path)):
            raise FailedPrecondition(f"Model '{entry.id}' at {entry.path} is cut short: the file ends before the "
                                     "tensors its header lists (a download or copy that did not finish?). "
                                     "Fetch or copy it again.")
        if entry.source not in ("folder", "hf-cache", "paired"):
            return
        missing = missing_parts(Path(entry.path))
        if entry.extra_path:  # a paired MotionAdapter folder: its weights
            missing += [f"the motion adapter's {m}" for m in model_folder_missing(Path(entry.extra_path))]
        if missing:
            fetch = "`huggingface-cli download" + (f" {entry.id}`" if entry.source == "hf-cache" else "`")
            raise FailedPrecondition(
                f"Model '{entry.id}' at {entry.path} is incomplete: {'; '.join(missing[:3])}"
                f"{' and more' if len(missing) > 3 else ''} (a download that did not finish?). Fetch the missing "
                f"files again ({fetch} on a machine with internet), or remove the folder.")

    def dtype_of(self, family: str) -> torch.dtype:
        return self.dtype or dtype_for(family, self.device, bf16_supported=self.bf16_supported)

    def loaded_bytes(self) -> int:
        return sum(a.parameter_bytes() for a in self._loaded.values())

    def _enforce_budget(self, keep: str) -> None:
        while self.loaded_bytes() > self.memory_budget and len(self._loaded) > 1:
            victim = next(k for k in self._loaded if k != keep)
            self.unload(victim)

    def unload(self, model_id: str) -> None:
        with self._lock:
            adapter = self._loaded.pop(model_id, None)
            if adapter is None:
                return
            log.info("unloading %s to stay within the memory budget", model_id)
            del adapter
            if torch.cuda.is_available():
                torch.cuda.empty_cache()


def _default_budget(device: torch.device) -> int:
    if device.type == "cuda" and torch.cuda.is_available():
        return int(torch.cuda.get_device_properties(device).total_memory * 0.8)
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * 0.5)
    except (ValueError, OSError):
        return 8 << 30
