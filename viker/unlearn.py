"""``viker unlearn``: start from the vanilla model, make it forget a forget split, save the result.

The run folder gets ``config.json`` (every setting, the method's parameters, what the method's setup
computed, versions and data hashes), ``history.json``, ``timing.json`` and the unlearned model under
``model/`` (CAGUL: its modules under ``cagul/``, the model's weights untouched).
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import torch

from viker.collate import Collator, check_max_length
from viker.data.clear import unlearning_data as clear_unlearning_data
from viker.data.examples import FINETUNE_SETS, ft_pairs, unlearning_examples, unpaired_warnings, without_pairs
from viker.data.loader import load_finetune, load_profiles, retain_profiles
from viker.data.schema import DEFAULT_FORGET, RETAIN_OF, check_forget_split
from viker.errors import VikerError, check_config, check_types, check_values, require, require_given
from viker.methods import get_method, title, unlearning_methods
from viker.methods.base import NO_SHARDED_REFERENCE, FrozenReference, UnlearnContext, needs_reference
from viker.methods.reference import SOURCES, default_cache_dir, given_cache_dir
from viker.model import (
    HALF_PRECISION,
    ON_ADAPTER_WHOLE,
    SAVE_WHOLE,
    LoraSettings,
    apply_lora,
    check_dtype,
    enable_gradient_checkpointing,
    folders_read,
    given_model,
    is_tiny_built,
    is_tiny_model,
    lora_changed,
    pick_dtype,
    refuse_unused_lora,
    resolve_model_path,
    save_model,
    weight_hashes,
)
from viker.model.cagul import refuse_cagul_run
from viker.presets import AVERAGES, UNLEARN_LORA, TrainConfig, unlearn_preset
from viker.progress import bars_as_asked
from viker.run_folder import (
    SAVE_CHOICES,
    check_resume,
    check_resume_or_overwrite,
    check_resumed_precision,
    check_run_folder,
    claim_run_folder,
    kept_checkpoints,
    used_settings,
)
from viker.runs import (
    as_recorded,
    checkpoints,
    nothing_recalled_warning,
    other_benchmark,
    paths_recorded,
    read_configs,
    runs_behind,
    to_jsonable,
    write_config,
    written_whole,
)
from viker.train import (
    finish_run,
    finished_state_dict,
    load_dtype,
    load_for_training,
    make_accelerator,
    prepare,
    runtime_info,
    shards_model,
    train,
)


@dataclass
class UnlearnConfig:
    model: str = ""  # the vanilla model (a run folder of `viker finetune`, a model folder or hub id)
    data: str = ""
    benchmark: str = "mllmu"  # mllmu | clear (forget splits forget01/05/10, with +tofu for its text questions)
    forget: str | None = None  # None: forget_10 (CLEAR: forget10), as the command line takes it
    method: str = "viker"
    method_args: dict = field(default_factory=dict)
    out: str = ""
    tuning: str = "lora"  # lora | full
    train: TrainConfig | None = None  # None: the preset the command line takes (viker.presets.unlearn_preset)
    lora: LoraSettings = field(default_factory=lambda: LoraSettings(**UNLEARN_LORA, merge=None))
    cache_dir: str | None = None  # ViKeR's and CAGUL's reference cache; None: $VIKER_CACHE or ~/.cache/viker
    max_length: int | None = None  # longest example in tokens (None: no limit); never truncates
    device: str | None = None
    dtype: str = "auto"
    trust_remote_code: bool = False
    # MLLMU-Bench: what the forget and retain streams hold, named as the vanilla finetune's --train-on (what the
    # model learned): all | ft_Data | auto (what the starting model's own finetune learned; see learned_by); None
    # once resolved on CLEAR, which has no such choice
    train_on: str | None = "auto"

    def __post_init__(self):
        check_types(self)


def learned_by(model: str, tiny: bool | None = None) -> str:
    """What ``model`` learned of the MLLMU-Bench people, as ``viker finetune --train-on`` names it: its finetune
    run's recorded choice, followed back through the unlearning runs that started from it (unlearning teaches
    nothing new, whatever it trained on); for a model that is no finetune run of ours, finetune's own default,
    ``all`` for a tiny model (trained from scratch) and ``ft_Data`` for a real checkpoint (MLLMU-Bench's vanilla
    finetune, which leaves the evaluation's questions unseen). Where the chain leads to a model no longer here,
    the nearest unlearning run's own choice stands. ``tiny``: whether the model is a tiny one, where the model
    itself tells (one passed in from Python, which ``model`` may not name a folder of)."""
    nearest, last = None, model  # the last model of the chain: a finetune run's, or one that is no run of ours
    for run in runs_behind(model):
        recorded = run.get(run["command"], {})
        if run["command"] == "finetune" and recorded.get("train_on") in FINETUNE_SETS:
            return recorded["train_on"]
        if run["command"] == "unlearn" and recorded.get("model"):
            nearest, last = nearest or recorded.get("train_on"), str(recorded["model"])
    if tiny is not None and last == model:  # no run of ours: the model passed in tells
        return "all" if tiny else "ft_Data"
    try:
        return "all" if is_tiny_model(last) else "ft_Data"
    except VikerError:  # no model there any more (or none ever)
        return nearest or "ft_Data"


def _settings(name: str) -> set[str]:
    return {f.name for f in fields(get_method(name))}


def make_method(name: str, args: dict, forget_split: str):
    if name not in unlearning_methods():
        known = "that is `viker finetune`" if name == "finetune" else "unknown method"
        raise VikerError(f"--method {name}: {known}; choose from {', '.join(unlearning_methods())}")
    cls, settings = get_method(name), _settings(name)
    for option in args:  # a setting of another method: say which take it, before anything is loaded
        if option not in settings:
            takers = [m for m in unlearning_methods() if option in _settings(m)]
            raise VikerError(f"--{option.replace('_', '-')} applies to --method {' / '.join(takers)} only"
                             if takers else f"method '{name}': no setting '{option}'")
    # the splits a method reads its reference images from, where it has the field
    if "forget_split" in settings:
        args = {"forget_split": forget_split, **args}
    if "retain_split" in settings:
        args = {"retain_split": RETAIN_OF.get(forget_split), **args}
    check_values(cls, args, f"method '{name}': ")  # "0.1" for β: one line naming it, not the first comparison's
    try:
        method = cls(**args)
    except TypeError as e:
        raise VikerError(f"method '{name}': {e}") from None
    streams = tuple(getattr(method, "streams", ()))
    if not streams or streams[0] != "forget" or not set(streams) <= {"forget", "retain"}:
        raise VikerError(f"method '{name}': streams {streams}; an unlearning method reads ('forget',) or "
                         "('forget', 'retain'), the forget split first")
    # the settings several methods share, refused before anything is loaded
    if hasattr(method, "average"):
        require(method.average in AVERAGES, "--average", method.average, f"choose {', '.join(AVERAGES)}")
    if hasattr(method, "beta"):
        require(method.beta > 0, "--beta", method.beta, "must be above 0")
    if hasattr(method, "retain_weight"):
        require(method.retain_weight >= 0, "--retain-weight", method.retain_weight, "must be at least 0")
    if hasattr(method, "k"):
        require(method.k >= 1, "--k", method.k, "must be at least 1")
    # a setting this variant of the method never reads would be recorded as if it had shaped the run
    unused = method.unused_settings() if hasattr(method, "unused_settings") else {}
    for option in args:
        if option in unused:
            raise VikerError(f"--{option.replace('_', '-')} does not apply {unused[option]}")
    return method


def method_paths_recorded(args: dict) -> dict:
    """A method's settings with the folders they name (a ``refs`` folder of reference images, NPO's
    ``reference_model``) as a config records them (:func:`viker.runs.as_recorded`: absolute), so that
    ``--resume`` compares folders rather than how they were typed."""
    from viker.methods.reference import SOURCES

    folders = {k: v for k, v in args.items() if isinstance(v, (str, Path)) and v
               and (k == "reference_model" or (k == "refs" and v not in SOURCES))}
    return args | {k: as_recorded(v) for k, v in folders.items()}


def resolved_settings(recorded: dict) -> dict:
    """An unlearning run's recorded config with its method's settings as the method reads them, defaults filled
    in: ``--resume --beta 0.1`` (NPO's default, given now and not then) goes on with the same run. A record that
    no longer makes a method is compared as it is. A folder a run started from Python recorded as typed (before
    such settings were recorded absolute) is compared as one now would be."""
    try:
        method = make_method(recorded["method"], method_paths_recorded(recorded["method_args"]), recorded["forget"])
    except (KeyError, TypeError, AttributeError, VikerError):
        return recorded
    return {**recorded, "method_args": to_jsonable({f.name: getattr(method, f.name) for f in fields(method)})}


def mllmu_streams(cfg: UnlearnConfig, streams: tuple[str, ...] = ("forget", "retain")) -> tuple[dict, dict, list]:
    """The forget and retain examples of an MLLMU-Bench split (``cfg.train_on`` resolved), which configs
    they came from, and warnings of the people of the ``streams`` a method reads that no ft_Data pair belongs to."""
    retain_split = RETAIN_OF[cfg.forget]
    forget_people = load_profiles(cfg.data, cfg.forget)
    if not forget_people:  # said before the ft_Data pairs of nobody are looked for
        raise VikerError(f"{cfg.data}: split {cfg.forget} has no people to unlearn (its files hold no rows)")
    retain_people = retain_profiles(cfg.data, cfg.forget, forget_people)
    records = load_finetune(cfg.data)
    data = {"forget": unlearning_examples(cfg.data, cfg.forget, forget_people, records, cfg.train_on),
            "retain": unlearning_examples(cfg.data, retain_split, retain_people, records, cfg.train_on)}
    used = {"benchmark": "mllmu", "forget_config": cfg.forget, "retain_config": retain_split,
            "ft_Data_size": len(records),
            # counted apart: a pair that is also a generation question is in the stream as the latter
            "ft_Data_pairs": {"forget": len(ft_pairs(forget_people, records)),
                              "retain": len(ft_pairs(retain_people, records))},
            # how many people no pair was found for (the warnings name them)
            "ft_Data_unmatched": {"forget": len(without_pairs(forget_people, records)),
                                  "retain": len(without_pairs(retain_people, records))}}
    if cfg.train_on == "ft_Data" and not used["ft_Data_pairs"]["forget"]:
        raise VikerError(f"{cfg.data}: no ft_Data pair has the image of a {cfg.forget} person (were the images "
                         "re-encoded?), and --train-on ft_Data unlearns those pairs alone; --train-on all unlearns "
                         "their generation questions, which the evaluation asks")
    groups = {"forget": (cfg.forget, forget_people, "unlearned"), "retain": (retain_split, retain_people, "retained")}
    return data, used, unpaired_warnings([groups[s] for s in streams], records, cfg.train_on)


def resolve_train_on(cfg: UnlearnConfig, started: dict | None = None, tiny: bool | None = None) -> UnlearnConfig:
    """``cfg`` with ``train_on`` as the run applies it: MLLMU-Bench's choice resolved (:func:`learned_by`); a
    resumed run's as it started (``started``: its config; one started before the choice was recorded trained on
    ``all``). CLEAR's unlearning data is its own, and the option is refused there. ``tiny``: as
    :func:`learned_by` takes it."""
    require(cfg.train_on in ("auto", *FINETUNE_SETS), "--train-on", cfg.train_on,
            f"choose from auto, {', '.join(FINETUNE_SETS)}")
    if cfg.benchmark == "clear":
        if cfg.train_on != "auto":
            raise VikerError("--train-on applies to --benchmark mllmu")
        return replace(cfg, train_on=None)
    if started:
        unlearned = started.get("unlearn", {})
        if cfg.train_on == "auto" or "train_on" not in unlearned:  # check_resume compares an explicit recorded one
            was = unlearned.get("train_on", "all")
            require(cfg.train_on in ("auto", was), "--train-on", cfg.train_on, f"the run started on {was}, and a "
                    "resumed run keeps to it")
            return replace(cfg, train_on=was)
    return replace(cfg, train_on=learned_by(cfg.model, tiny) if cfg.train_on == "auto" else cfg.train_on)


def saves_merged(cfg: UnlearnConfig, wraps: bool, sharded: bool, chosen: str | None, weights_dtype,
                on_adapter: bool) -> bool:
    """Whether the run saves its model merged (True) or the adapter alone, refusing what cannot be saved.
    ``--save auto`` (``cfg.lora.merge`` None) merges unless the weights are 16-bit (a merge would round the
    update away) or sharded (FSDP and DeepSpeed cannot merge); a model that is itself an adapter run is merged
    when loaded, so a run on it is saved merged. ``chosen``: what auto chose when a resumed run started;
    ``weights_dtype``: a callable giving the dtype the weights will train in."""
    if cfg.tuning == "full" and cfg.lora.merge is False:
        raise VikerError("--save adapter: --tuning full trains no adapter")
    lora = cfg.tuning == "lora" and not wraps
    if lora and sharded and on_adapter:
        raise VikerError(f"--model {cfg.model}: an adapter run, merged into its base model when loaded; under FSDP "
                         "or DeepSpeed a LoRA run saves only its adapter, which would name that base and leave the "
                         "first run out: use DDP, or --tuning full")
    merge = cfg.lora.merge
    if merge is None:
        merge = chosen != "adapter" if chosen else \
            not lora or on_adapter or not (sharded or weights_dtype() in HALF_PRECISION)
    if lora and on_adapter and (not merge or cfg.train.snapshot_every):
        raise VikerError(f"--model {cfg.model}: an adapter run, merged into its base model when loaded; an adapter "
                         "trained on it would name that base and leave the first run out, so save this run merged "
                         "(--save merged, without --snapshot-every)")
    if sharded and lora and merge:
        raise VikerError("--save merged: under FSDP or DeepSpeed only the adapter can be saved (--save adapter; "
                         "merge it later on one process), or use DDP")
    return merge


def no_adapter(method: str, tuning: str) -> str | None:
    """Why an unlearning run trains no LoRA adapter (what it trains instead), None where it trains one: the
    reason LoRA settings given to it are refused."""
    if method == "cagul":
        return "CAGUL trains modules of its own"
    return "--tuning full trains every weight" if tuning == "full" else None


def refuse_for_cagul(cfg: UnlearnConfig, resumed: bool) -> None:
    """CAGUL trains modules of its own and saves them as they are: a choice of how the model's weights are tuned
    or saved is refused rather than recorded as if it had shaped the run. ``resumed``: a run there is resumed."""
    save = SAVE_CHOICES[cfg.lora.merge]
    for option, given in (("--tuning full", cfg.tuning == "full"), (f"--save {save}", save != "auto")):
        if cfg.method == "cagul" and given:
            # a run started before this was refused goes on without it (its record leaves it out)
            without = "; a run started with it resumes without it" if resumed else ""
            raise VikerError(f"{option} does not apply to --method cagul: it trains modules of its own, and never "
                             f"the model's weights{without}")


def resumed_save(cfg: UnlearnConfig, started: dict) -> tuple[UnlearnConfig, str | None]:
    """``--save`` for a run going on from ``started`` (the config it started with; empty for a new run), and,
    where it goes on with ``--save`` left to choose, what it saved as when it started: it keeps that choice."""
    recorded = started.get("unlearn", {}).get("lora", {})
    if "merge" in recorded and recorded["merge"] is None and cfg.lora.merge is not None \
            and started.get("saved") == SAVE_CHOICES[cfg.lora.merge]:
        cfg = replace(cfg, lora=replace(cfg.lora, merge=None))  # --save given as what auto chose: the same run
    if not started or cfg.lora.merge is not None:
        return cfg, None
    if recorded.get("merge") is not None:  # a run from before --save auto, which recorded its choice here
        cfg = replace(cfg, lora=replace(cfg.lora, merge=recorded["merge"]))
    return cfg, started.get("saved")


def folders_read_by(cfg: UnlearnConfig, method, model_given: bool) -> list[str]:
    """The folders a run reads, which its --out must not replace: the data, the model (unless given loaded), and
    those the method reads (NPO's reference model, a folder of reference images)."""
    reads = [cfg.data] + ([] if model_given else folders_read(cfg.model))
    reads += folders_read(method.reference_model) if getattr(method, "reference_model", None) else []
    refs = getattr(method, "refs", None)
    return reads + ([refs] if refs and refs not in SOURCES and Path(refs).is_dir() else [])


def restore_given(given, as_it_came: dict, made=None) -> None:
    """The model ``given`` to a run put back as far as the run changed it: without the LoRA layers of ``made``, the
    PeftModel the run made of it (a model given with adapters of its own keeps them), with its weights trainable
    as they were (LoRA and CAGUL freeze them) and each module in its train or eval mode (CAGUL sets eval):
    ``as_it_came`` maps each weight to its ``requires_grad`` and each module to its ``training``."""
    if made is not None and made is not given and hasattr(made, "unload"):  # the given model's own layers back
        made.unload()
    for part, flag in as_it_came.items():
        if isinstance(part, torch.nn.Module):
            part.training = flag
        else:
            part.requires_grad_(flag)


def resolved_run(cfg: UnlearnConfig, resume: bool, model_and_processor=None) -> tuple:
    """``cfg`` checked and resolved, as the run will record it (its defaults filled in, or a resumed run's choices
    kept), with its method, the config of the run a --resume goes on with (empty otherwise), and the model passed
    in, checked; refused in one line, before anything loads, where a setting cannot be."""
    check_config(cfg, UnlearnConfig, "run_unlearn")
    require_given(model=cfg.model, data=cfg.data, out=cfg.out)
    if cfg.benchmark not in ("mllmu", "clear"):
        raise VikerError(f"--benchmark {cfg.benchmark}: choose mllmu or clear")
    if cfg.forget is None:
        cfg = replace(cfg, forget=DEFAULT_FORGET[cfg.benchmark])
    if cfg.benchmark == "mllmu":
        check_forget_split(cfg.forget)
    if cfg.tuning not in ("lora", "full"):
        raise VikerError(f"--tuning {cfg.tuning}: choose lora or full")
    cfg = replace(cfg, method_args=method_paths_recorded(cfg.method_args))
    method = make_method(cfg.method, cfg.method_args, cfg.forget)
    cfg = replace(cfg, cache_dir=given_cache_dir(cfg.cache_dir))
    refuse_for_cagul(cfg, resume and Path(cfg.out, "config.json").is_file())
    refuse_unused_lora(lora_changed(cfg.lora, UnlearnConfig().lora), no_adapter(cfg.method, cfg.tuning))
    check_max_length(cfg.max_length)
    check_dtype(cfg.dtype)
    tiny = None  # a model passed in tells itself whether it is tiny, where cfg.model may name no folder
    if model_and_processor is not None:
        model_and_processor = given_model(model_and_processor, cfg.dtype)  # the device is the run's to place it on
        tiny = is_tiny_built(model_and_processor[0])
    if cfg.train is None:
        cfg = replace(cfg, train=unlearn_preset(cfg.method, is_tiny_model(cfg.model) if tiny is None else tiny))
    # the config of the run a --resume goes on with: the choices it started with are kept
    started = read_configs(cfg.out)[0] if resume and Path(cfg.out, "config.json").is_file() else {}
    cfg = kept_checkpoints(resolve_train_on(cfg, started, tiny), started, "unlearn")
    return cfg, method, started, model_and_processor


def unlearning_streams(cfg: UnlearnConfig, method) -> tuple[dict, dict, list[str]]:
    """The forget and retain examples, which configs they came from (for the run's config), and warnings of the
    people of the method's streams that no ft_Data pair belongs to; refused where a stream the method trains on is
    empty."""
    if cfg.benchmark == "clear":
        data, used = clear_unlearning_data(cfg.data, cfg.forget)
        unpaired = []
    else:
        data, used, unpaired = mllmu_streams(cfg, tuple(method.streams))
    if not data["forget"]:
        raise VikerError(f"{cfg.data}: split {cfg.forget} has no examples to unlearn")
    if "retain" in method.streams and not data["retain"]:  # said by its config, before a model loads
        raise VikerError(f"{cfg.data}: the retain split {used['retain_config']} has no examples, and --method "
                         f"{cfg.method} trains on it")
    return data, used, unpaired


def run_record(cfg: UnlearnConfig, method, data: dict, used: dict, setup: dict, runtime: dict, saved: str | None,
               model_files: dict | None) -> dict:
    """What a run's config.json holds beside the command's settings: the method's settings (not those this variant
    never reads, which would be recorded as if they shaped the run), the data read, what its setup did, where and
    how it ran, what --save saved (None: no LoRA adapter to save), and the hashes of the weights it started from."""
    unread = method.unused_settings() if hasattr(method, "unused_settings") else {}
    settings = {"unlearn": used_settings(paths_recorded(asdict(cfg))),
                "method": {"name": cfg.method, "title": title(cfg.method),  # as tables print it, from anywhere
                           **{k: v for k, v in asdict(method).items() if k not in unread}},
                "data": used, "examples": {k: len(v) for k, v in data.items()}, "setup": setup, "runtime": runtime}
    if saved is not None:
        settings["saved"] = saved
    if model_files is not None:
        settings["model_files"] = model_files
    return settings


@bars_as_asked
def run_unlearn(cfg: UnlearnConfig, progress: bool = True, model_and_processor=None, resume: bool = False,
                overwrite: bool = False):
    """Unlearn and save into ``cfg.out``; returns (model, processor, history). ``model_and_processor`` skips
    loading: that model is the one trained, in place (its LoRA layers added to it, or its own weights changed),
    and returned (saved with ``lora.merge=False``, inside the PeftModel that holds its adapters); pass a copy to
    keep the one given as it was. A run refused before training, or stopped in training (an error, a loss refused
    at its first step, Ctrl-C), takes off the LoRA layers it added (under full tuning the weights stay as trained so
    far) and leaves its weights trainable, and its modules in train or eval mode, as they were, as CAGUL (which
    trains modules of its own around it) does after training. The model returned merged or fully tuned has each
    weight's ``requires_grad`` and each module's mode as the model had them when the run started (trainable, as
    loaded), so that another run may start from it; the adapter alone (``lora.merge=False``) comes inside its
    PeftModel, the base weights frozen. A model with LoRA adapters of its own is refused (peft adds no LoRA over
    LoRA, and full tuning would train only its adapters): merge them into it first. ``cfg.out`` must be new or
    empty; ``overwrite`` replaces a run there, and ``resume`` continues one that was stopped after a checkpoint
    (``train.checkpoint_every``; :func:`viker.run_folder.check_run_folder`)."""
    check_resume_or_overwrite(resume, overwrite)
    cfg, method, started, model_and_processor = resolved_run(cfg, resume, model_and_processor)
    data, used, unpaired = unlearning_streams(cfg, method)
    if model_and_processor is None:
        refuse_cagul_run(cfg.model, "unlearn")
    elif not getattr(method, "wraps_model", False) and getattr(model_and_processor[0], "peft_config", None):
        raise VikerError("the model passed in has LoRA adapters of its own: merge them into it first (peft's "
                         "merge_and_unload()); peft adds no LoRA over LoRA, and with tuning='full' only the adapters, "
                         "not the model's weights, would train")
    # the weights it starts from, by hash: what an adapter or CAGUL saved here needs, and --resume checks
    model_files = weight_hashes(cfg.model) if model_and_processor is None else None
    cfg, chosen = resumed_save(cfg, started)
    if resume:
        compared = paths_recorded(asdict(cfg))
        if "train_on" not in started.get("unlearn", {"train_on": None}):
            compared.pop("train_on")  # a run started before the choice was recorded, on all
        check_resume(cfg.out, "unlearn", compared, cfg.data, model_files, resolve=resolved_settings)
    accelerator = make_accelerator(cfg.train, resume, cfg.device, cfg.dtype)  # one process or several
    if resume:
        check_resumed_precision(cfg.out, accelerator)
    if accelerator.is_main_process:
        for warning in (other_benchmark(cfg.model, cfg.data, cfg.benchmark),
                        *unpaired,
                        nothing_recalled_warning(cfg.model) if cfg.benchmark == "mllmu" else None):
            if warning:
                print(f"warning: {warning}", file=sys.stderr)
    sharded = shards_model(accelerator)
    wraps = getattr(method, "wraps_model", False)  # CAGUL: trains modules around the frozen model
    if sharded and wraps:
        raise VikerError(f"--method {cfg.method} is not supported under FSDP or DeepSpeed; use DDP")
    if sharded and cfg.tuning == "full" and needs_reference(method):  # before the model loads or --out is replaced
        raise VikerError(f"{NO_SHARDED_REFERENCE} (--method {cfg.method} reads one)")
    if wraps and cfg.train.gradient_checkpointing:  # it would be silently ignored
        raise VikerError(f"--gradient-checkpointing does not apply to --method {cfg.method}: the frozen model it "
                         "trains its modules around runs in eval mode, where no layer is recomputed")
    on_adapter = model_and_processor is None and Path(resolve_model_path(cfg.model), "adapter_config.json").is_file()
    merge = saves_merged(cfg, wraps, sharded, chosen, lambda: (
        next(model_and_processor[0].parameters()).dtype if model_and_processor is not None else
        pick_dtype(torch.device("cpu"), load_dtype(accelerator, cfg.dtype))), on_adapter)
    reads = folders_read_by(cfg, method, model_given=model_and_processor is not None)
    replaced = check_run_folder(cfg.out, accelerator, resume, overwrite, reads)  # removed once this run can start
    from accelerate.utils import set_seed

    set_seed(cfg.train.seed)
    model, processor = model_and_processor or load_for_training(accelerator, cfg.model, cfg.device, cfg.dtype,
                                                                cfg.trust_remote_code)
    collate = Collator(processor, max_length=cfg.max_length)
    # every example the method trains on, its own (IdkPO's refusals) too, fits --max-length: checked before the run
    # changes the model
    own = method.preflight_examples(data, cfg.train.seed) if hasattr(method, "preflight_examples") else []
    collate.preflight(model, data["forget"] + (data["retain"] if "retain" in method.streams else []) + own)
    given = model_and_processor[0] if model_and_processor is not None else None
    as_it_came = {  # what the model, given or loaded, gets back (restore_given)
        **{p: p.requires_grad for p in model.parameters()}, **{m: m.training for m in model.modules()}}
    try:
        if wraps:
            model.requires_grad_(False)
        elif cfg.tuning == "lora":
            model = apply_lora(model, cfg.lora)
        if cfg.train.gradient_checkpointing:
            enable_gradient_checkpointing(model)
        setup_only = getattr(method, "reference_at_setup_only", False)
        ctx = UnlearnContext(
            model=model, processor=processor, collate=collate, data=data,
            # θ_full; with full tuning a copy of the weights, so only for a method that reads it and reads it while
            # training (ViKeR reads it in setup alone, before the model changes)
            reference=FrozenReference(model, separate=model if wraps else None, sharded=sharded,
                                      cached=getattr(method, "caches_reference", False), setup_only=setup_only,
                                      autocast=accelerator.autocast, precision=accelerator.mixed_precision)
            if needs_reference(method) else None,
            autocast=accelerator.autocast,
            dtype=load_dtype(accelerator, cfg.dtype), trust_remote_code=cfg.trust_remote_code,
            data_dir=Path(cfg.data), cache_dir=Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir(),
            seed=cfg.train.seed, progress=progress and accelerator.is_main_process,
            resume_from=next(iter(checkpoints(cfg.out)), None) if resume else None,
        )
        start = time.perf_counter()
        if wraps and hasattr(method, "setup"):  # CAGUL builds the modules it trains here: accelerate must see them
            method.setup(ctx)
        prepared = prepare(ctx.model, cfg.train, len(data[method.streams[0]]), accelerator, resume=resume)
        if not wraps and hasattr(method, "setup"):  # on the placed (or sharded) model: reference passes run there
            method.setup(ctx)
        if setup_only and ctx.reference is not None:
            ctx.reference.close()
        model = ctx.model
        out = Path(cfg.out)
        setup_seconds = time.perf_counter() - start
        settings = run_record(cfg, method, data, used, ctx.info, runtime_info(accelerator, model),
                              SAVE_CHOICES[merge] if cfg.tuning == "lora" and not wraps else None, model_files)
        # every check passed (the lengths, the method's setup): --overwrite may remove an earlier run now
        claim_run_folder(cfg.out, accelerator, replaced)
        if accelerator.is_main_process:  # only the main process writes; the others hold the same results
            write_config(out, "unlearn", settings, cfg.data, resumed=started)
    except BaseException:  # refused before training (its setup, its record): the model passed in is left as it came
        if given is not None:
            restore_given(given, as_it_came, made=model)
        raise

    def save(state_dict, folder: Path = out, merge: bool = merge):
        if wraps:  # the modules and their configuration; the base model is referenced, not copied
            with written_whole(folder / "cagul") as partial:
                method.save(partial, resolve_model_path(cfg.model), ctx.info)
            return None
        with written_whole(folder / "model") as partial:
            return save_model(model, processor, partial, merge=merge, state_dict=state_dict,
                              whole=ON_ADAPTER_WHOLE if on_adapter else SAVE_WHOLE)

    def snapshot(epochs: int) -> None:
        """The model after ``epochs`` epochs, in epochs/N/ (LoRA: the adapter, since merging would end the
        run's LoRA layers), with the run's config saying so, for ``viker eval --model RUN/epochs/N``."""
        folder = out / "epochs" / str(epochs)
        state_dict = finished_state_dict(prepared)  # every process takes part in gathering a sharded model
        if accelerator.is_main_process:
            save(state_dict, folder, merge=False)
            run = settings["unlearn"]
            snapshot_settings = {**settings, "unlearn": {
                **run, "train": {**run["train"], "epochs": epochs, "max_steps": None, "snapshot_every": 0},
                **({"lora": {**run["lora"], "merge": False}} if "lora" in run else {})}} | \
                ({"saved": "adapter"} if "saved" in settings else {})
            write_config(folder, "unlearn", snapshot_settings | {"snapshot_of": run["out"]}, cfg.data)
        accelerator.wait_for_everyone()

    try:
        lam = f", λ={method.lam:g}" if isinstance(getattr(method, "lam", None), (int, float)) else ""  # a sweep's bars
        history = train(prepared.model, method, data, collate, cfg.train, desc=f"unlearn ({cfg.method}{lam})",
                        progress=progress, run_dir=out, resume=resume, prepared=prepared, snapshot=snapshot)
    except BaseException:  # stopped in training (an error, a refused loss, Ctrl-C): its LoRA layers off again
        if given is not None and not sharded:  # (under full tuning its weights stay as trained so far)
            restore_given(given, as_it_came, made=model)
        raise
    timing = {"setup_seconds": round(setup_seconds, 2), "total_seconds": round(time.perf_counter() - start, 2)}
    saved = finish_run(prepared, out, {"history.json": history, "timing.json": timing}, save)
    if wraps and given is not None:  # CAGUL froze the model it was given, and trained none of it
        restore_given(given, as_it_came)
    model = model if saved is None else saved  # the merged model on the main process
    if not wraps and not sharded and not hasattr(model, "peft_config"):  # merged, or fully tuned: trainable again,
        restore_given(model, as_it_came)  # as it came (training froze it and left it in eval mode)
    return model, processor, history

