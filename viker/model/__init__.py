"""Loading any image-text-to-text model (or building the tiny one), and wrapping it in LoRA."""

from __future__ import annotations

import json
import re
import sys
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
from safetensors import SafetensorError
from torch import nn

from viker.errors import VikerError, check_types, require
from viker.presets import FINETUNE_LORA, MIXED_PRECISION
from viker.runs import (
    TRAINING_COMMANDS,
    as_recorded,
    check_hub_reachable,
    checkpoints,
    file_hashes,
    hub_shaped,
    is_hub_id,
    read_configs,
    saved_model_of,
    write_json,
)

# Where the language model lives inside the common architectures (LLaVA, Qwen2-VL, Idefics2, ...).
LANGUAGE_MODEL_PATTERN = r"(^|\.)(language_model|text_model)\."


@dataclass
class LoraSettings:
    """LoRA on the language model's linear layers by default (not the vision tower or projector).

    The defaults are finetuning's (``FINETUNE_LORA``, merged on saving); an unlearning run's own default is
    ``LoraSettings(**UNLEARN_LORA, merge=None)`` (``UnlearnConfig().lora``). To change one setting of an unlearning
    run, start from its own: ``replace(UnlearnConfig().lora, r=8)``, not ``LoraSettings(r=8)``."""

    r: int = FINETUNE_LORA["r"]
    alpha: float = FINETUNE_LORA["alpha"]
    dropout: float = FINETUNE_LORA["dropout"]
    # None: every linear layer of the language model; a str: peft's regex
    target_modules: list[str] | tuple[str, ...] | str | None = None
    merge: bool | None = True  # save the model merged (True), the adapter alone (False), None: --save auto
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        check_types(self)
        require(self.r >= 1, "--lora-r", self.r, "must be at least 1")
        require(self.alpha > 0, "--lora-alpha", self.alpha, "must be above 0")
        require(0 <= self.dropout < 1, "--lora-dropout", self.dropout, "must be from 0 to below 1")


def refuse_unused_lora(given: list[str], why: str | None) -> None:
    """A run that trains no adapter (``why`` says what it trains instead; None: it trains one) refuses the LoRA
    settings ``given`` (as the user named them: ``--lora-r``, or :func:`lora_changed`'s) rather than record them
    as if they had shaped the run."""
    if given and why:
        raise VikerError(f"{given[0]} applies to LoRA tuning only: {why}")


def lora_changed(lora: LoraSettings, default: LoraSettings) -> list[str]:
    """The LoRA settings of ``lora`` that differ from ``default`` (whether it merges aside), as the Python API
    names them: ``lora.alpha=16 (the default is 32)``."""
    return [f"lora.{f.name}={getattr(lora, f.name)!r} (the default is {getattr(default, f.name)!r})"
            for f in fields(LoraSettings) if f.name != "merge" and getattr(lora, f.name) != getattr(default, f.name)]


def pick_device(device: str | None = None) -> torch.device:
    """``device`` (cpu, cuda, cuda:1, mps ...), refused when this machine's PyTorch cannot use it; None: cuda
    when there is a GPU, else the CPU."""
    if not device:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise VikerError(f"--device {device}: not a device (cpu, cuda, cuda:1, mps ...)") from None
    if dev.type not in ("cpu", "cuda", "mps"):  # meta holds no numbers; xla and the like are not supported
        raise VikerError(f"--device {device}: choose cpu, cuda, cuda:N or mps")
    if dev.type == "cuda" and (dev.index or 0) >= torch.cuda.device_count():
        raise VikerError(f"--device {device}: this PyTorch sees {torch.cuda.device_count()} CUDA GPUs")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise VikerError(f"--device {device}: MPS is not available here")
    return dev


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "bf16": torch.bfloat16,
          "fp16": torch.float16, "fp32": torch.float32}


def check_dtype(dtype: str) -> None:
    """``--dtype``, refused before any work (a model inspected, a warning of it printed) where it names none."""
    if dtype != "auto" and dtype not in DTYPES:
        raise VikerError(f"--dtype {dtype}: choose auto, {', '.join(DTYPES)}")


def check_mixed_precision(mixed_precision: str | None, device_type: str | None = None,
                          asked: str = "--mixed-precision") -> None:
    """Refuse a ``--mixed-precision`` (``asked``: where it was given) that is none of accelerate's, or fp16 on the
    CPU, where accelerate autocasts to nothing: a run would train in float32 while recording fp16."""
    if mixed_precision not in (None, *MIXED_PRECISION):
        raise VikerError(f"{asked} {mixed_precision}: choose no, bf16 or fp16")
    if mixed_precision == "fp16" and device_type == "cpu":
        raise VikerError(f"{asked} fp16: accelerate autocasts to fp16 on a GPU only (on the CPU a run would train in "
                         "float32 while it records fp16, and is refused); give bf16 on the CPU, or no")


def check_cpu_autocast(dtype: str, mixed_precision: str | None, device_type: str) -> None:
    """Refuse ``--dtype`` float16 under bf16 autocast on the CPU, whose autocast takes no float16 weights (the first
    forward pass stopped with a RuntimeError from deep inside torch)."""
    if mixed_precision == "bf16" and device_type == "cpu" and DTYPES.get(dtype) == torch.float16:
        raise VikerError(f"--dtype {dtype} under bf16 autocast: the CPU's autocast takes no float16 weights; give "
                         "--dtype bfloat16 or float32")


def pick_dtype(device: torch.device, dtype: str = "auto") -> torch.dtype:
    if dtype != "auto":
        check_dtype(dtype)
        return DTYPES[dtype]
    if device.type == "cuda" and native_bf16(device):
        return torch.bfloat16
    return torch.float32


def native_bf16(device: torch.device) -> bool:
    """Whether the GPU ``device`` computes in bf16 itself: compute capability 8 on (Ampere, Hopper), or ROCm.
    ``torch.cuda.is_bf16_supported()`` also says yes where bf16 is emulated (a T4, a V100), slowly, and of the
    current GPU rather than this one."""
    return bool(torch.version.hip) or torch.cuda.get_device_capability(device)[0] >= 8


def resolve_model_path(path: str | Path) -> str:
    """A run folder of ours holds its model under ``model/`` (a whole model, or a LoRA adapter saved with
    ``--save adapter``, which :func:`load_model` merges into the base model its adapter_config.json names).
    A local folder is made absolute, so that what is saved from its model (an adapter's base model)
    names it from anywhere; a hub id is passed on as is."""
    p = Path(path).expanduser()
    if not p.exists() and not is_hub_id(path):
        raise VikerError(f"{path}: no such model folder" + (
            f" (read as a folder, not a hub id, since a folder {p.parent} is here: a mistyped path?)"
            if hub_shaped(path) else " (and not a hub id of the form org/name)"))
    if saved := saved_model_of(p):
        return str(saved.resolve())
    from viker.model.cagul import MODULES_FILE, is_cagul_run

    if p.name == "cagul" and (p / MODULES_FILE).is_file() and is_cagul_run(p.parent):  # not a run named cagul
        raise VikerError(f"{path}: the modules of a CAGUL run, not a model; give the run folder, {p.parent}, which "
                         "loads the base model with them in front")
    if p.exists() and not any((p / name).is_file() for name in ("config.json", "adapter_config.json")):
        raise VikerError(f"{p}: not a model folder (no config.json, and no model/config.json)")
    run, evaluation = read_configs(p) if p.is_dir() else ({}, None)
    if run.get("command") == "eval":  # an evaluation's folder of its own: its config.json is no model's
        scored = (evaluation or {}).get("model")
        raise VikerError(f"{p}: an evaluation, not a model" + (f"; give the model it scored, {scored}" if scored
                                                                 else ""))
    if run.get("command") in TRAINING_COMMANDS and not (p / "cagul").is_dir():
        stopped = " (stopped before its end? --resume continues it)" if checkpoints(p) else \
            " (unfinished: still running, or stopped before its first checkpoint or while saving its model; if " \
            "stopped, run its command again with --overwrite)"
        raise VikerError(f"{p}: a `viker {run['command']}` run with no model in it{stopped}")
    return as_recorded(path)


def load_model(path: str | Path, device: str | None = None, dtype: str = "auto", trust_remote_code: bool = False,
               merge_adapter: bool = True, check_inputs: bool = True):
    """Model and processor from a local folder, a run folder of ours, or (online) a hub id. A CAGUL run
    folder gives its base model wrapped with the saved CAGUL modules (viker.model.cagul). A LoRA adapter is
    merged into its base model, unless ``merge_adapter=False`` and the base loads in 16 bits, where a merge
    rounds away more than :data:`MERGE_LOSS_KEPT` of the update (:func:`merge_loss`): it is then applied
    unmerged, as it trained (evaluation; a model to train on is merged). A processor that is not the model's
    is refused: one whose tokenizer is larger than the model's embeddings, or (``check_inputs``: one forward
    pass, which a training run makes on its own examples instead) whose inputs the model cannot take."""
    from transformers import AutoModelForImageTextToText

    from viker.model.cagul import is_cagul_run, load_cagul

    if is_cagul_run(path):
        return load_cagul(path, device, dtype, trust_remote_code)
    path, adapter, base = located(path)
    dev = pick_device(device)
    if adapter:  # one of our runs records the base model it trained the adapter on
        check_weights_unchanged(Path(path).parent, weight_hashes(base), f"{path}: an adapter on {base}")
    try:
        processor = load_processor(processor_folder(path, base), trust_remote_code, config_path=base)
        model = pretrained(AutoModelForImageTextToText, base, dtype=pick_dtype(dev, dtype),
                           trust_remote_code=trust_remote_code)
        if adapter:  # merged: the model the run ended with, like a run saved merged
            from peft import PeftModel

            with quiet_peft(), warnings.catch_warnings():  # peft starts the tensors an adapter lacks as new ones
                warnings.filterwarnings("error", message="Found missing adapter keys")
                model = PeftModel.from_pretrained(model, path)
    # SafetensorError: a weights file cut short; RuntimeError: a .bin one, or weights of other shapes than the config's
    except (OSError, ValueError, SafetensorError, RuntimeError) as e:
        raise VikerError(f"{path}: cannot load model ({why_not_loaded(e, path, base)})") from None
    except UserWarning as e:
        lacking = re.findall(r"'([^']+)'", str(e))
        raise VikerError(f"{path}: the adapter lacks {len(lacking) or 'some'} of its weights ({', '.join(lacking[:2])}"
                         f"{' and more' if len(lacking) > 2 else ''}), which would start as new, not as trained: an "
                         "adapter file cut short, or saved with other LoRA settings") from None
    model = model.to(dev)
    # an adapter stays unmerged only where asked (evaluation), on 16-bit weights that a merge would take more
    # than MERGE_LOSS_KEPT of its update from, or whose LoRA merge_loss does not measure
    lost = merge_loss(model) if adapter and model.dtype in HALF_PRECISION else None
    if adapter and (merge_adapter or model.dtype not in HALF_PRECISION or lost is not None and lost <= MERGE_LOSS_KEPT):
        if lost is not None and lost > MERGE_LOSS_WARN:  # a model to train on: it starts from the rounded merge
            print(f"warning: {path}: merging this LoRA adapter into {str(model.dtype).removeprefix('torch.')} "
                  f"weights rounds away {100 * lost:.0f}% of its update, so the model loaded has moved less than "
                  "the one trained; --dtype float32 keeps the update whole", file=sys.stderr)
        model = model.merge_and_unload().requires_grad_(True)  # peft froze the base: trainable, as any model loaded
    check_processor_fits(model, processor, path, check_inputs)
    return model, processor


def check_processor_fits(model: nn.Module, processor, path: str, forward: bool = True) -> None:
    """Refuse another model's processor beside these weights: a tokenizer with more tokens than the model has
    embeddings (its ids past them fail deep inside the first batch, or read other rows), or (``forward``) inputs
    the model cannot take (:meth:`viker.collate.Collator.check_model_takes`)."""
    from viker.collate import Collator

    tokens, rows = len(getattr(processor, "tokenizer", processor)), model.get_input_embeddings().num_embeddings
    if tokens > rows:
        raise VikerError(f"{path}: its tokenizer has {tokens} tokens and the model embeds {rows}: the processor is "
                         "another model's")
    if forward:
        try:
            Collator(processor).check_model_takes(model)
        except VikerError as e:
            raise VikerError(f"{path}: {e}") from None


def pretrained(auto_class, folder: str, **kwargs) -> nn.Module:
    """``auto_class.from_pretrained(folder, **kwargs)``, refused where the checkpoint lacks some of the model's
    weights: transformers starts those at random and only prints a load report, and every figure of a model
    so loaded would be noise."""
    model, info = auto_class.from_pretrained(folder, output_loading_info=True, **kwargs)
    missing = sorted(info.get("missing_keys") or ())
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise VikerError(f"{folder}: its checkpoint lacks {len(missing)} of the model's weights ({shown}), which "
                         "would start at random: a weights file cut short, or saved from another model")
    return model


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model", "spm.model",
                   "sentencepiece.bpe.model")


def why_not_loaded(error: Exception, *folders: str | Path) -> str:
    """Why loading from ``folders`` (local folders, or hub ids) failed, in a few words: no config in local
    folders; a tokenizer error where they hold no tokenizer file (transformers reports it as a backend it
    cannot build "from one of: " nothing); else the error's first line."""
    said = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    local = [Path(f).expanduser() for f in folders if Path(f).expanduser().is_dir()]
    if not local or len(local) < len(folders):
        return said
    config = ("config.json", "adapter_config.json")
    if not any((f / name).is_file() for f in local for name in config):
        return f"no config in it: none of {', '.join(config)}"
    if "tokenizer" in said.lower() and not any((f / name).is_file() for f in local for name in TOKENIZER_FILES):
        return f"no tokenizer in it: none of {', '.join(TOKENIZER_FILES)}"
    return said


def adapter_base(path: str) -> str:
    """The base model a saved LoRA adapter names (an absolute folder, when viker saved it from one)."""
    from viker.runs import read_json

    config = read_json(Path(path, "adapter_config.json"))
    base = config.get("base_model_name_or_path") if isinstance(config, dict) else None
    if not base or not isinstance(base, str):
        raise VikerError(f"{path}/adapter_config.json names no base model (base_model_name_or_path)")
    base = base_still_there(base, f"{path}/adapter_config.json", "the adapter was trained on")
    if Path(base).is_dir():  # a run folder of ours named as the base: the model in it
        base = resolve_model_path(base)
    if Path(base).is_dir() and not Path(base, "config.json").is_file() and Path(base, "adapter_config.json").is_file():
        raise VikerError(f"{path}: its base model, {base}, is itself a LoRA adapter, which loading this one would "
                         "replace: merge that adapter into its own base (peft's merge_and_unload), save it, and name "
                         "that folder as this adapter's base_model_name_or_path")
    trained_on = (config.get("auto_mapping") or {}).get("base_model_class")
    base_config = read_json(Path(base, "config.json")) if Path(base, "config.json").is_file() else None
    architectures = base_config.get("architectures") if isinstance(base_config, dict) else None
    if trained_on and architectures and trained_on not in architectures:
        raise VikerError(f"{path}: an adapter trained on a {trained_on}, and its base model {base} is a "
                         f"{', '.join(architectures)}: name the model it was trained on")
    return base


def base_still_there(base: str, named_in: str, trained: str) -> str:
    """``base``, the model a run's file names as the one it ``trained`` (what was trained, and how), refused in
    one line where it is a folder no longer there (moved or removed since): only that model makes the run's."""
    if Path(base).is_absolute() and not Path(base).exists():
        raise VikerError(f"{base}: no such folder, and {named_in} names it as the base model {trained}: put that "
                         "model back there")
    return base


def is_tiny_model(path: str | Path) -> bool:
    """Whether ``path`` is a model built by ``viker finetune --model tiny`` (its config records its tiny settings;
    an adapter run's, its base model's): ``viker unlearn`` gives such a model the tiny presets."""
    folder = Path(resolve_model_path(path))
    if (folder / "adapter_config.json").is_file() and not (folder / "config.json").is_file():
        folder = Path(adapter_base(str(folder)))
    config = folder / "config.json"
    try:  # the top-level key the tiny builders write (a real model's config may say "tiny" anywhere else)
        return config.is_file() and isinstance(json.loads(config.read_text(encoding="utf-8")).get("tiny"), dict)
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):  # not a model's config: the loader says so
        return False


def is_tiny_built(model: nn.Module) -> bool:
    """Whether a ``model`` in memory is one the tiny builders made (its config holds their settings), as
    :func:`is_tiny_model` tells of a folder: what a model passed in from Python is judged by."""
    return isinstance(getattr(getattr(model, "config", None), "tiny", None), dict)


def folders_read(path: str | Path) -> list[str]:
    """The local folders loading ``path`` as a model to train reads (:func:`load_model`): the model's own and,
    for a LoRA adapter, the base model it names. A hub id reads none."""
    path = resolve_model_path(path)
    base = adapter_base(path) if Path(path, "adapter_config.json").is_file() else None
    return [p for p in (path, base) if p is not None and Path(p).exists()]


WEIGHT_FILES = ("*.safetensors", "*.bin")


def weight_hashes(path: str | Path) -> dict[str, str]:
    """sha256 of the weight files of every local folder loading ``path`` reads (:func:`folders_read`), by
    absolute path: what a run records of the model it trains from (``model_files``), so that a base model
    replaced since is told apart from it."""
    return {str(Path(folder, name)): digest for folder in folders_read(path) for pattern in WEIGHT_FILES
            for name, digest in file_hashes(folder, pattern).items()}


def same_weights(recorded: dict[str, str] | None, now: dict[str, str]) -> bool:
    """Whether two :func:`weight_hashes` records name the same weight files, each by its name in its folder,
    wherever those folders are: a model folder moved or copied elsewhere is the same model."""
    def contents(record: dict[str, str]) -> list[tuple[str, str]]:
        return sorted((Path(path).name, digest) for path, digest in record.items())
    return bool(recorded) and contents(recorded) == contents(now)


def check_weights_unchanged(run: str | Path, now: dict[str, str], context: str) -> None:
    """Refuse a model whose weight files (``now``: :func:`weight_hashes`) are not those the run in ``run``
    recorded when it started from it: an adapter, CAGUL's modules or a resumed run trained on other weights
    mean nothing on these."""
    recorded = read_configs(run)[0].get("model_files")
    # not a run of ours, or one that read no model folder (the tiny model, built); or the same files, wherever the
    # folders holding them are now
    if recorded is None or same_weights(recorded, now):
        return
    then = {(Path(file).name, digest) for file, digest in recorded.items()}
    names = {Path(file).name for file in now}
    changed = sorted(file for file, digest in now.items() if (Path(file).name, digest) not in then) + \
        sorted(file for file in recorded if Path(file).name not in names)  # files it read that are gone
    raise VikerError(f"{context}: {changed[0]} is not the file {run} was trained on ({len(changed)} weight "
                     f"file(s) differ from those {Path(run) / 'config.json'} records)")


def processor_folder(path: str, base: str) -> str:
    """Where the processor of the model at ``path`` (resolved; ``base``: its adapter's base model, or ``path``)
    is: an adapter saved by peft alone has no processor files, and the base model's are its."""
    return path if path == base or has_processor(path) else base


def located(path: str | Path) -> tuple[str, bool, str]:
    """A model's folder or hub id resolved (:func:`resolve_model_path`), whether it is a LoRA adapter, and the base
    model its weights load from (itself, where it is no adapter), refused at once where the hub cannot be reached
    for it."""
    path = resolve_model_path(path)
    adapter = Path(path, "adapter_config.json").is_file()
    base = adapter_base(path) if adapter else path
    try:
        check_hub_reachable(base)  # a hub id, or an adapter's base named by one
    except VikerError as e:  # a relative folder, read from another working folder, is taken for a hub id too
        if not adapter:
            raise
        raise VikerError(f"{path}/adapter_config.json names the base model {base} (base_model_name_or_path), "
                         f"which is {str(e).removeprefix(f'{base}: ')}") from None
    return path, adapter, base


def processor_of(path: str | Path, trust_remote_code: bool = False):
    """The processor :func:`load_model` gives with the model at ``path`` (not a CAGUL run), read without the
    model's weights: enough to check it before minutes of loading them."""
    path, _, base = located(path)
    try:
        return load_processor(processor_folder(path, base), trust_remote_code, config_path=base)
    except (OSError, ValueError) as e:
        raise VikerError(f"{path}: cannot load its processor ({why_not_loaded(e, path, base)})") from None


def has_processor(path: str) -> bool:
    """Whether a folder holds a processor's files (its image processor's at least: a tokenizer alone, as some
    adapters are saved with, is no processor of an image-text model), as a saved model does."""
    return any(Path(path, name).is_file() for name in ("processor_config.json", "preprocessor_config.json"))


def load_processor(path: str, trust_remote_code: bool = False, config_path: str | None = None):
    """The checkpoint's own processor (tokenizer, image processor, chat template) through AutoProcessor.
    Qwen2-VL's also wants a video processor, which needs torchvision: without torchvision it is built
    from its image processor and tokenizer alone (see viker.model.families); ``config_path`` holds the
    model's config when ``path`` does not (an adapter's folder)."""
    from transformers import AutoProcessor
    from transformers.utils import is_torchvision_available

    try:
        processor = AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ImportError, ValueError):
        if is_torchvision_available():
            raise
        from viker.model.families import processor_without_video

        processor = processor_without_video(path, trust_remote_code, config_path)
        if processor is None:
            raise
    tokenizer = getattr(processor, "tokenizer", processor)
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token  # padding is masked out everywhere, so any token will do
    return processor


def language_model_linear_layers(model: nn.Module) -> list[str]:
    """Qualified names of the language model's linear layers (the default LoRA targets)."""
    names = [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and re.search(LANGUAGE_MODEL_PATTERN, name)
    ]
    if not names:
        raise VikerError(f"{type(model).__name__}: found no linear layers under a language model; "
                         "pass LoRA target modules explicitly")
    return names


def apply_lora(model: nn.Module, settings: LoraSettings) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    targets = settings.target_modules or language_model_linear_layers(model)
    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=targets,
        **settings.extra,
    )
    with quiet_peft():
        return get_peft_model(model, config)


@contextmanager
def eval_mode(model: nn.Module):
    """``model`` in eval mode (no dropout) inside the block, then each of its modules back in its own mode."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        yield model.eval()
    finally:
        for module, training in modes:
            module.training = training


@contextmanager
def quiet_peft():
    """peft reads an attribute transformers has renamed: a warning with nothing in it for a user to do."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Recompute each layer's activations in the backward pass instead of keeping them: activation
    memory drops from every layer's to about one layer's, for roughly a third more compute. The
    non-reentrant variant works with frozen inputs, DDP and FSDP; with LoRA the embeddings' output is
    made to require grad so that gradients reach the adapters through the checkpointed frozen layers."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not getattr(base, "supports_gradient_checkpointing", False):
        raise VikerError(f"--gradient-checkpointing: {type(base).__name__} does not support it")
    enable = getattr(base, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:  # transformers before activation_checkpointing_enable
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if hasattr(model, "peft_config"):
        base.enable_input_require_grads()


HALF_PRECISION = (torch.bfloat16, torch.float16)
MERGE_LOSS_WARN = 0.05  # a merge that rounds away more of the LoRA update than this is warned of
MERGE_LOSS_KEPT = 0.01  # evaluation merges an adapter whose merge loses no more than this (faster generation)


def merge_loss(model: nn.Module) -> float | None:
    """The share of a LoRA model's update that merging it into its 16-bit weights rounds away:
    ‖(what the merge adds) − ΔW‖ / ‖ΔW‖ over every LoRA layer, ΔW = scaling · B·A in float32. A weight moves
    only by whole steps of its last bit (bf16 has 8 significant bits), so a change under half a step leaves
    it as it was; an unlearning update is small, and much of it can vanish. Computed layer by layer, adding
    to a copy of each weight what peft's merge adds (ΔW cast as peft casts it), without merging anything.
    None where no LoRA layer has 16-bit weights (float32 keeps the update to its own rounding), and where a
    layer is one this does not measure exactly (LoRA on another kind of layer, DoRA, several adapters at once;
    none of them is what viker trains)."""
    from peft.tuners.lora import Linear as LoraLinear
    from peft.tuners.lora import LoraLayer

    layers = [m for m in model.modules() if isinstance(m, LoraLayer) and not m.merged]
    if any(type(m) is not LoraLinear or getattr(m, "lora_variant", None) or any(getattr(m, "use_dora", {}).values())
           or len([n for n in m.active_adapters if n in m.lora_A]) > 1 for m in layers):
        return None
    lost = total = 0.0
    half = False
    with torch.no_grad():
        for module in layers:
            weight = module.get_base_layer().weight
            if weight.dtype not in HALF_PRECISION:
                continue
            half, before = True, weight.float()
            for name in (n for n in module.active_adapters if n in module.lora_A):  # as trained, and as merged
                exact = (module.lora_B[name].weight.float() @ module.lora_A[name].weight.float()) * module.scaling[name]
                exact = exact.T if module.fan_in_fan_out else exact
                added = (before + module.get_delta_weight(name).float()).to(weight.dtype).float() - before
                lost += float((added - exact).square().sum())
                total += float(exact.square().sum())
    if not half:
        return None
    return (lost / total) ** 0.5 if total else 0.0


def weights_dtype(model: nn.Module) -> str | None:
    """The dtype most of ``model``'s weights are held in (what ``--dtype auto`` became), as ``float32``."""
    sizes: dict[torch.dtype, int] = {}
    for p in model.parameters():
        sizes[p.dtype] = sizes.get(p.dtype, 0) + p.numel()
    return str(max(sizes, key=sizes.get)).removeprefix("torch.") if sizes else None


def given_model(pair, dtype: str = "auto", device: str | None = None) -> tuple:
    """``model_and_processor`` as passed in from Python, checked: a (model, processor) pair whose processor reads
    images (a bare tokenizer would ask each image question as text, without its image), in the ``dtype`` and on
    the ``device`` asked where one is asked: a model passed in is used as it is, never converted or moved, so a
    run would record settings it did not run with."""
    from transformers import PreTrainedTokenizerBase

    if not isinstance(pair, (tuple, list)) or len(pair) != 2:
        raise VikerError(f"model_and_processor: give a (model, processor) pair, not {type(pair).__name__}")
    model, processor = pair
    if not isinstance(model, nn.Module):
        raise VikerError(f"model_and_processor: the pair's first is the model, a torch module, not "
                         f"{type(model).__name__}")
    if isinstance(processor, PreTrainedTokenizerBase) or not callable(processor):
        raise VikerError(f"model_and_processor: the pair's second is the model's processor (AutoProcessor), which "
                         f"reads images; a {type(processor).__name__} does not")
    held = weights_dtype(model)
    if dtype != "auto" and DTYPES[dtype] != getattr(torch, held or "float32"):
        raise VikerError(f"dtype={dtype!r}: the model passed in holds {held} weights, and is used as it is; convert "
                         f"it (model.to(torch.{str(DTYPES[dtype]).removeprefix('torch.')})) or leave dtype 'auto'")
    asked, at = device and pick_device(device), next(model.parameters(), torch.empty(0)).device
    if asked and (asked.type, asked.index or 0) != (at.type, at.index or 0):
        raise VikerError(f"device={device!r}: the model passed in is on {at}, and is used where it is; move it "
                         f"(model.to({device!r})) or leave device None")
    return model, processor


def how_loaded(model: nn.Module) -> dict:
    """What an evaluation's config records of how its model was loaded: the device and the weights' dtype it ran
    in, and an adapter applied unmerged."""
    where = {"device": str(next(model.parameters()).device), "weights_dtype": weights_dtype(model)}
    return where | ({"adapter": "applied unmerged"} if hasattr(model, "peft_config") else {})


# what keeps a LoRA update whole where merging it into 16-bit weights rounds much of it away
SAVE_WHOLE = "--save adapter keeps the update whole, and viker eval applies it unmerged"
ON_ADAPTER_WHOLE = "--dtype float32 keeps the update whole (a run on an adapter run is saved merged)"


def save_model(model: nn.Module, processor, out: str | Path, merge: bool = True,
               state_dict: dict | None = None, whole: str = SAVE_WHOLE) -> nn.Module:
    """Save with safetensors; a LoRA model is merged first unless ``merge=False`` (adapter only).
    Returns the model as saved (merged, when it was). ``state_dict``: the weights to write instead of
    the model's own (a sharded model's gathered weights; it cannot be merged). Merging into 16-bit weights
    records what it rounds away (:func:`merge_loss`) in ``merge.json`` beside the weights, and warns when
    that is more than :data:`MERGE_LOSS_WARN` of the update, saying what keeps it whole (``whole``)."""
    lost = None
    if hasattr(model, "peft_config") and merge:
        if state_dict is not None:
            raise VikerError("a sharded LoRA model cannot be merged when saved; save the adapter alone")
        lost = merge_loss(model)
        if lost is not None and lost > MERGE_LOSS_WARN:
            dtype = str(model.dtype).removeprefix("torch.")
            print(f"warning: merging the LoRA update into {dtype} weights rounds away {100 * lost:.0f}% of it (changes "
                  f"below a weight's last bit leave it as it was): the saved model has moved less than the trained "
                  f"one. {whole}", file=sys.stderr)
        model = model.merge_and_unload()
    model.save_pretrained(Path(out), safe_serialization=True, state_dict=state_dict)
    processor.save_pretrained(Path(out))
    if lost is not None:
        write_json(Path(out, "merge.json"), {"update_lost": round(lost, 6)})
    return model
