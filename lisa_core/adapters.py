"""LoRA adapters switched at run time on one loaded base model (``Lisa.load_adapter`` / ``Lisa.set_adapter``).

An adapter is the directory ``lisa-export RUN OUT --adapter-only`` writes: peft's ``save_pretrained`` output
(``adapter_config.json`` + ``adapter_model.safetensors``) and ``trained_weights.safetensors``, the other tensors the
run trained (lm_head, embed_tokens, the SAM mask decoder, text_hidden_fcs) under peft's ``base_model.model.`` names.

- The LoRA part goes through peft, injected in place into the loaded ``LisaForCausalLM`` (so the engine keeps calling
  the same modules): loading adds an inactive adapter, activating one is peft's ``set_adapter``, and the base model
  is the adapter layers disabled, which computes exactly the base layers.
- The trained tensors are copied into the model's parameters at each switch. The base values of exactly the tensors
  that the loaded adapters replace are kept (on the CPU), so switching back to the base is exact. On a quantised
  model a quantised linear layer among them (text_hidden_fcs) is swapped as a whole module.
- Every adapter is checked against the model before anything changes (files, names, LoRA targets, shapes): a bad one
  raises ``AdapterError`` and the model stays as it was.
- Each switch increments ``version``; an engine ``Session`` remembers the version it was opened on and refuses to go
  on with other weights (its KV cache was computed by the old ones).
"""
from __future__ import annotations

import json
import re
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .checkpoint import CheckpointError, check_shapes
from .quantize import is_quantized, quantized_linear

ADAPTER_CONFIG = "adapter_config.json"
LORA_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
TRAINED_WEIGHTS = "trained_weights.safetensors"
PEFT_PREFIX = "base_model.model."
LORA_KEY = re.compile(r"(?P<module>.+)\.(?P<kind>lora_A|lora_B)\.weight")
NAME = re.compile(r"[A-Za-z0-9_-]+")


class AdapterError(CheckpointError):
    """An adapter that cannot be used with this model; the message says which file, key or shape and why."""


@dataclass
class AdapterFiles:
    """An adapter directory as read from disk (configuration and tensor shapes, no tensors yet)."""

    path: Path
    config: object  # peft.LoraConfig
    lora_file: Path
    lora_shapes: dict[str, tuple[int, ...]]  # peft's keys (base_model.model.<module>.lora_A.weight)
    extra_shapes: dict[str, tuple[int, ...]]  # model parameter names (the base_model.model. prefix removed)


def tensor_shapes(file: Path) -> dict[str, tuple[int, ...]]:
    """The shapes in a weights file, read from its header (safetensors) or memory-mapped (``.bin``)."""
    try:
        if file.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(file), "pt") as f:
                return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
        return {k: tuple(v.shape) for k, v in state.items()}
    except Exception as err:
        raise AdapterError(f"cannot read {file}: {err}") from err


def read_adapter(path: str | Path) -> AdapterFiles:
    """Check an adapter directory on its own (files, LoRA configuration, tensor names); no model needed."""
    root = Path(path).expanduser()
    if not str(path).strip() or not root.is_dir():
        raise AdapterError(f"adapter '{path}' is not a directory (expected lisa-export --adapter-only output)")
    missing = [name for name in (ADAPTER_CONFIG, TRAINED_WEIGHTS) if not (root / name).is_file()]
    lora_file = next((root / name for name in LORA_WEIGHTS if (root / name).is_file()), None)
    if lora_file is None:
        missing.append(" or ".join(LORA_WEIGHTS))
    if missing:
        raise AdapterError(f"adapter '{root}' lacks {', '.join(missing)} (expected lisa-export --adapter-only output)")
    try:
        fields = json.loads((root / ADAPTER_CONFIG).read_text())
    except (OSError, ValueError) as err:
        raise AdapterError(f"cannot read {root / ADAPTER_CONFIG}: {err}") from err
    if not isinstance(fields, dict) or fields.get("peft_type") != "LORA":
        kind = fields.get("peft_type") if isinstance(fields, dict) else None
        raise AdapterError(f"{root / ADAPTER_CONFIG}: peft_type is {kind!r}; only LoRA adapters are supported")
    from peft import LoraConfig

    try:
        config = LoraConfig.from_pretrained(str(root))
    except Exception as err:
        raise AdapterError(f"{root / ADAPTER_CONFIG} is not a valid LoRA configuration: {err}") from err
    if not config.target_modules:
        raise AdapterError(f"{root / ADAPTER_CONFIG} names no target_modules")
    if (getattr(config, "use_dora", False) or getattr(config, "modules_to_save", None)
            or getattr(config, "target_parameters", None) or getattr(config, "bias", "none") != "none"):
        raise AdapterError(f"{root / ADAPTER_CONFIG}: only plain LoRA is supported (no DoRA, modules_to_save, "
                           "target_parameters or bias)")
    lora_shapes = tensor_shapes(lora_file)
    unnamed = [k for k in lora_shapes if not (k.startswith(PEFT_PREFIX) and LORA_KEY.fullmatch(k))]
    if unnamed:
        raise AdapterError(f"{lora_file}: {len(unnamed)} tensors are not LoRA weights under peft's names "
                           f"(base_model.model.<module>.lora_A/lora_B.weight), e.g. {unnamed[:5]}")
    extras = tensor_shapes(root / TRAINED_WEIGHTS)
    unnamed = [k for k in extras if not k.startswith(PEFT_PREFIX)]
    if unnamed:
        raise AdapterError(f"{root / TRAINED_WEIGHTS}: {len(unnamed)} tensors are not under peft's "
                           f"'{PEFT_PREFIX}' names, e.g. {unnamed[:5]}")
    return AdapterFiles(root, config, lora_file, lora_shapes, {k[len(PEFT_PREFIX):]: v for k, v in extras.items()})


@dataclass
class LoadedAdapter:
    path: Path
    extras: dict[str, torch.Tensor] = field(default_factory=dict)  # parameter name → value (CPU, its dtype)
    modules: dict[str, nn.Module] = field(default_factory=dict)  # module path → a quantised replacement


def _tuner_layer(module: nn.Module) -> bool:
    return hasattr(module, "base_layer") and hasattr(module, "lora_A")


def _clean(name: str) -> str:
    return name.replace(".base_layer", "")


class Adapters:
    """The adapters loaded on one model, which one is active (``None``: the base model) and a ``version`` that
    changes at every switch. Every method holds one lock, so a check from another thread never sees a half-done
    switch; running the model while switching is the caller's to avoid (the engine is one-thread anyway)."""

    def __init__(self, model: nn.Module, device: torch.device, quantization: str | None = None):
        self.model, self.device, self.quantization = model, device, quantization
        self.active: str | None = None
        self.version = 0
        self._loaded: dict[str, LoadedAdapter] = {}
        self._peft = None  # the peft.PeftModel around ``model`` while an adapter is loaded
        self._base_values: dict[str, torch.Tensor] = {}  # parameter name → its base value (CPU copy)
        self._base_modules: dict[str, nn.Module] = {}  # module path → the base (quantised) module
        self._lock = threading.RLock()

    @property
    def loaded(self) -> dict[str, Path]:
        return {name: entry.path for name, entry in self._loaded.items()}

    # ---------------------------------------------------------------- checks
    def _layout(self) -> tuple[dict[str, nn.Module], dict[str, tuple[int, ...]]]:
        """The model's modules and parameter shapes under their base names (LoRA wrappers and quantised storage
        seen through: a linear layer's weight is ``(out, in)`` whatever its storage)."""
        modules, params = {}, {}
        inside: tuple[str, ...] = ()
        for name, module in self.model.named_modules():
            if inside and name.startswith(inside):
                continue
            if _tuner_layer(module):
                inside += (name + ".",)
                module = module.get_base_layer()
            modules[name] = module
            for attr, param in module.named_parameters(recurse=False):
                shape = tuple(param.shape)
                if isinstance(module, nn.Linear) and attr == "weight":
                    shape = (module.out_features, module.in_features)
                params[f"{name}.{attr}" if name else attr] = shape
        return modules, params

    def check(self, path: str | Path) -> AdapterFiles:
        """Read ``path`` and check it fits this model; raises ``AdapterError`` and changes nothing."""
        from peft.tuners.tuners_utils import check_target_module_exists

        files = read_adapter(path)
        with self._lock:
            modules, params = self._layout()
        config = files.config
        targets = [name for name in modules if name and check_target_module_exists(config, name)]
        if not targets:
            named = config.target_modules
            named = repr(named) if isinstance(named, str) else sorted(named)[:5]
            raise AdapterError(f"adapter '{files.path}' targets no module of this model (target_modules {named}): "
                               "it was made for another base model")
        not_linear = [t for t in targets if not isinstance(modules[t], nn.Linear)]
        if not_linear:
            raise AdapterError(f"adapter '{files.path}' puts LoRA on modules that are not linear layers, e.g. "
                               f"{not_linear[:5]}; only LoRA on linear layers is supported")
        expected = {}
        for target in targets:
            rank = config.r
            if config.rank_pattern:  # peft's per-module ranks: take the file's (peft checks it when loading)
                rank = files.lora_shapes.get(f"{PEFT_PREFIX}{target}.lora_A.weight", (config.r,))[0]
            linear = modules[target]
            expected[f"{PEFT_PREFIX}{target}.lora_A.weight"] = (rank, linear.in_features)
            expected[f"{PEFT_PREFIX}{target}.lora_B.weight"] = (linear.out_features, rank)
        try:
            check_shapes(files.lora_shapes, expected, f"adapter '{files.path}' does not fit this model: its LoRA "
                                                      f"weights ({files.lora_file.name}) against its target_modules")
            extras = {_clean(k): v for k, v in files.extra_shapes.items()}
            check_shapes(extras, {k: params[k] for k in extras if k in params},
                         f"adapter '{files.path}' does not fit this model: {TRAINED_WEIGHTS}")
        except CheckpointError as err:
            raise AdapterError(str(err)) from None
        return files

    # ---------------------------------------------------------------- load, switch, delete
    def load(self, path: str | Path, name: str | None = None) -> str:
        """Check and load the adapter at ``path`` under ``name`` (default: the directory's name, made unique); it is
        not activated. On any error the model is left as it was."""
        with self._lock:
            files = self.check(path)
            name = self._new_name(files.path, name)
            entry = self._read_extras(files)
            self._add_lora(name, files)
            self._loaded[name] = entry
            for param_name in entry.extras:  # params no loaded adapter touched so far hold their base values now
                if param_name not in self._base_values:
                    self._base_values[param_name] = self._param(param_name).detach().to("cpu", copy=True)
            for module_path in entry.modules:
                if module_path not in self._base_modules:
                    self._base_modules[module_path] = self.model.get_submodule(self._module_path(module_path))
            self._apply_lora_state()  # the new adapter's layers come up enabled: back to what is active
            return name

    def activate(self, name: str | None) -> None:
        """Make ``name`` the active adapter; ``None``: the base model. A change increments ``version``."""
        with self._lock:
            if name is not None and name not in self._loaded:
                raise AdapterError(f"no adapter named '{name}' is loaded (loaded: {sorted(self._loaded) or 'none'})")
            if name == self.active:
                return
            self.active = name
            self.version += 1
            self._apply_extras()
            self._apply_lora_state()

    def delete(self, name: str) -> None:
        """Unload ``name`` (if active, the base model becomes active first). With no adapter left the model holds
        no peft layers any more."""
        with self._lock:
            if name not in self._loaded:
                raise AdapterError(f"no adapter named '{name}' is loaded (loaded: {sorted(self._loaded) or 'none'})")
            if self.active == name:
                self.activate(None)
            del self._loaded[name]
            self._remove_lora(name)
            # Tensors no remaining adapter replaces hold their base values (nothing active touches them).
            touched = {k for entry in self._loaded.values() for k in entry.extras}
            self._base_values = {k: v for k, v in self._base_values.items() if k in touched}
            touched = {k for entry in self._loaded.values() for k in entry.modules}
            self._base_modules = {k: v for k, v in self._base_modules.items() if k in touched}

    # ---------------------------------------------------------------- internals
    def _new_name(self, path: Path, name: str | None) -> str:
        if name is not None:
            if not NAME.fullmatch(name):
                raise AdapterError(f"adapter name '{name}' must be letters, digits, '_' or '-'")
            if name in self._loaded:
                raise AdapterError(f"an adapter named '{name}' is already loaded (from {self._loaded[name].path}); "
                                   "delete it first or choose another name")
            return name
        stem = re.sub(r"[^A-Za-z0-9_-]", "_", path.resolve().name) or "adapter"
        name, n = stem, 1
        while name in self._loaded:
            n += 1
            name = f"{stem}_{n}"
        return name

    def _param(self, name: str) -> torch.Tensor:
        """A parameter by its base name (a LoRA wrapper exposes its base layer's ``weight``/``bias``)."""
        module_path, _, attr = name.rpartition(".")
        return getattr(self.model.get_submodule(module_path), attr)

    def _module_path(self, module_path: str) -> str:
        """Where the base module lives now (inside a LoRA wrapper if it has one)."""
        while _tuner_layer(self.model.get_submodule(module_path)):
            module_path += ".base_layer"
        return module_path

    def _read_extras(self, files: AdapterFiles) -> LoadedAdapter:
        from safetensors.torch import load_file

        try:
            tensors = load_file(str(files.path / TRAINED_WEIGHTS))
        except Exception as err:
            raise AdapterError(f"cannot read {files.path / TRAINED_WEIGHTS}: {err}") from err
        entry = LoadedAdapter(files.path)
        quantised: dict[str, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            name = _clean(key[len(PEFT_PREFIX):])
            module_path, _, attr = name.rpartition(".")
            module = self.model.get_submodule(self._module_path(module_path))
            if is_quantized(module) and attr == "weight":
                quantised.setdefault(module_path, {})["weight"] = value
            elif is_quantized(module) and attr == "bias":
                quantised.setdefault(module_path, {})["bias"] = value
            else:
                param = self._param(name)
                entry.extras[name] = value.to("cpu", param.dtype).contiguous()
        for module_path, values in quantised.items():
            if "weight" not in values:  # a bias alone is a plain (unquantised) parameter
                entry.extras[f"{module_path}.bias"] = values["bias"].to("cpu", self._param(
                    f"{module_path}.bias").dtype).contiguous()
                continue
            base = self._base_modules.get(module_path)
            if base is None:  # nothing replaced it yet: the module in the model is the base one
                base = self.model.get_submodule(self._module_path(module_path))
            bias = values.get("bias", base.bias.detach() if base.bias is not None else None)
            entry.modules[module_path] = quantized_linear(values["weight"], bias, self.quantization).to(self.device)
        return entry

    def _add_lora(self, name: str, files: AdapterFiles) -> None:
        """peft: wrap the model on the first adapter, then load the LoRA weights; undone on any error."""
        from peft import PeftModel

        created = self._peft is None
        if created and hasattr(self.model, "peft_config"):
            raise AdapterError("the model already carries peft layers that Lisa's adapters do not own")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if created:
                    files.config.inference_mode = True
                    self._peft = PeftModel(self.model, files.config, adapter_name=name)
                result = self._peft.load_adapter(str(files.path), adapter_name=name, is_trainable=False,
                                                 torch_device=str(self.device))
            if result.missing_keys or result.unexpected_keys:
                raise AdapterError(f"peft left keys unloaded: missing {result.missing_keys[:5]}, unexpected "
                                   f"{result.unexpected_keys[:5]}")
        except Exception as err:
            self._remove_lora(name)
            if isinstance(err, AdapterError):
                raise
            raise AdapterError(f"adapter '{files.path}' could not be loaded: {err}") from err

    def _remove_lora(self, name: str) -> None:
        if self._peft is None:  # wrapping failed half-way: put the base layers back by hand
            for path, module in list(self.model.named_modules()):
                if _tuner_layer(module):
                    self.model.set_submodule(path, module.get_base_layer())
            if hasattr(self.model, "peft_config"):
                del self.model.peft_config
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if name in self._peft.peft_config:
                self._peft.delete_adapter(name)
            if not self._peft.peft_config or not self._loaded:
                self._peft.base_model.unload()  # the LoRA wrappers replaced by their base layers again
                self._peft = None
        self._apply_lora_state()

    def _apply_lora_state(self) -> None:
        if self._peft is None:
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if self.active is None:
                self._peft.base_model.disable_adapter_layers()
            else:
                self._peft.base_model.enable_adapter_layers()
                self._peft.set_adapter(self.active, inference_mode=True)

    @torch.no_grad()
    def _apply_extras(self) -> None:
        entry = self._loaded.get(self.active) if self.active is not None else None
        for name, base in self._base_values.items():
            value = entry.extras.get(name, base) if entry is not None else base
            self._param(name).copy_(value)
        for module_path, base in self._base_modules.items():
            module = entry.modules.get(module_path, base) if entry is not None else base
            self.model.set_submodule(self._module_path(module_path), module)
