"""Recipes: a model and a data set taken through a chain of compression stages, in YAML.

    name: deep-compression-lenet5
    data: {source: fashion-mnist}
    baseline: {model: lenet5, train: {epochs: 20, lr: 0.05}}
    stages:
      - method: prune_iterative
        config: {prune: {threshold: {kind: std, ratio: 1.5}}, steps: 3}
      - method: share_kmeans
        config: {conv_bits: 8, fc_bits: 5}
        finetune: {epochs: 2, lr: 0.001}
        budget: 1.0
      - method: quantize
        config: {weights: 8, activations: 8}
    pack: {coders: [huffman, ans]}
    export: {c: true, int8: true}

Every field is validated by the config model the method itself uses (netshrink.methods lists
them), so a recipe cannot say anything a method would refuse. A bad recipe is a
ConfigError naming the field and its line in the file, raised before any training starts.
`netshrink.pipeline.run_recipe` runs a recipe.
"""

import re
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from .checkpoint import checkpoint_paths
from .codec import PackConfig
from .data import DataConfig, source_path
from .deploy import ExportConfig
from .device import check_device_name
from .errors import ConfigError, Error
from .methods import METHOD_NAMES, AnyStage
from .models import MODELS, ModelSpec
from .train import FitConfig

# `netshrink run` writes into runs/NAME: one plain folder name, so no name leads out of runs/
_RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


class BaselineConfig(BaseModel):
    """Where the pipeline starts: `model` trained with `train` (cached by what made it, so the
    second run loads it), or a `checkpoint` of yours. `model` is a zoo name with optional
    arguments, `vgg_small(width=0.5)`, or an import path `package.module:factory`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str | None = None
    train: FitConfig | None = None
    checkpoint: Path | None = None

    @field_validator("model")
    @classmethod
    def _model(cls, text: str | None) -> str | None:
        if text is not None:
            spec = _parse_spec(text)
            if ":" not in spec.name and spec.name not in MODELS:
                raise ValueError(f"unknown model {spec.name!r}; the zoo has {', '.join(MODELS)}")
        return text

    @field_validator("checkpoint")
    @classmethod
    def _checkpoint(cls, path: Path | None) -> Path | None:
        if path is not None and not all(p.is_file() for p in checkpoint_paths(path)):
            raise ValueError(f"no checkpoint at {path} (its .safetensors and .json)")
        return path

    @model_validator(mode="after")
    def _one_start(self):
        if self.checkpoint is not None and (self.model is not None or self.train is not None):
            raise ValueError("give either checkpoint, or model (and train), not both")
        if self.checkpoint is None and self.model is None:
            raise ValueError("give model (to train a baseline) or checkpoint (to start from one)")
        return self

    @property
    def spec(self) -> ModelSpec:
        return _parse_spec(self.model)

    @property
    def fit(self) -> FitConfig:
        return self.train or FitConfig()


class Recipe(BaseModel):
    """A whole pipeline: the data, the baseline, the stages in order, how to pack the file and
    what to deploy beside it (`export`: C99 sources, int8 / fp32 ONNX; netshrink.deploy).
    `seed` becomes every `seed` field a stage leaves unset (training order, k-means start) and
    stage i also starts torch's generator at seed + i, so a run is reproducible, a resumed run
    equals an uninterrupted one, and another seed is another run. The baseline keeps its own
    `train.seed`: it is what the cache is keyed by. `device` is where it computes ("auto": CUDA
    when present); it is not part of what a stage's result is keyed by."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = "recipe"
    seed: int = 0
    data: DataConfig = DataConfig()
    baseline: BaselineConfig
    stages: list[AnyStage] = []
    pack: PackConfig = PackConfig()
    export: ExportConfig = ExportConfig()
    device: str = "auto"

    def as_written(self) -> dict:
        """The fields the recipe sets, in JSON types: what rebuilds it with the same meaning.
        A full `model_dump` also writes every default, and a `seed` written out is a seed set:
        the recipe rebuilt from it would no longer pass its own `seed` to the stages."""
        return self.model_dump(mode="json", exclude_unset=True)

    @field_validator("device")
    @classmethod
    def _device(cls, device: str) -> str:
        try:
            return check_device_name(device)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        if not _RUN_NAME.fullmatch(name):
            raise ValueError(
                f"{name!r} cannot name a run folder: give `name:` of 1 to 100 letters, digits, "
                "'.', '_' or '-', starting with a letter or digit"
            )
        return name

    @field_validator("data")
    @classmethod
    def _data(cls, data: DataConfig) -> DataConfig:
        try:
            path = source_path(data.source)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        if path is not None and not path.exists():
            raise ValueError(f"data source {data.source!r}: {path} does not exist")
        return data

    @model_validator(mode="after")
    def _unique_names(self):
        titles = [stage.title for stage in self.stages]
        repeated = sorted({t for t in titles if titles.count(t) > 1})
        if repeated:
            raise ValueError(
                f"stages named {', '.join(repeated)} more than once: give each a distinct name"
            )
        return self

    @model_validator(mode="after")
    def _exports_fixed_point(self):
        wants = [k for k in ("c", "int8") if getattr(self.export, k)]
        if wants and not any(type(stage).fixed_point for stage in self.stages):
            raise ValueError(
                f"export: {', '.join(wants)}: the C and int8 exports need a fixed-point model: "
                "add a quantize, qat or search_bits stage"
            )
        return self


def set_field(entry: dict, path: str, value) -> None:
    """Set the dotted `path` of a recipe stage entry: ("config.bits", 4) -> {"config": {"bits":
    4}}, making the groups on the way (`netshrink apply --set`, `netshrink sweep`)."""
    *parents, leaf = path.split(".")
    for part in parents:
        entry = entry.setdefault(part, {})
        if not isinstance(entry, dict):
            raise ConfigError(f"{path}: {part} is a value, not a group of fields")
    entry[leaf] = value


def trial_recipe(recipe: Recipe, *, limit: int | None = None, epochs: int | None = None) -> Recipe:
    """`recipe` cut down to try it quickly (`netshrink run --limit N --epochs E`): at most
    `limit` examples of each split, and every training in it, the baseline's, each fine-tuning
    and each method's own (any FitConfig at any depth), at most `epochs` epochs."""
    data = recipe.data if limit is None else recipe.data.model_copy(update={"limit": limit})
    baseline = recipe.baseline
    if epochs is not None and baseline.model is not None:  # its default training counts too
        baseline = baseline.model_copy(update={"train": baseline.fit})
    trial = recipe.model_copy(update={"data": data, "baseline": baseline})
    return trial if epochs is None else _cap_epochs(trial, epochs)


def _cap_epochs(value, epochs: int):
    if isinstance(value, FitConfig):
        return value.model_copy(update={"epochs": min(value.epochs, epochs)})
    if isinstance(value, BaseModel):
        update = {
            name: _cap_epochs(getattr(value, name), epochs) for name in type(value).model_fields
        }
        return value.model_copy(update=update)
    if isinstance(value, (list, tuple)):
        return type(value)(_cap_epochs(v, epochs) for v in value)
    return value


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe file; ConfigError naming the field and line when it is wrong.

    Example:
        >>> recipe = load_recipe("recipes/deep-compression-lenet5.yaml")
        >>> [stage.method for stage in recipe.stages]
        ['prune_iterative', 'share_kmeans', 'quantize']
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read recipe {path}: {exc.strerror}") from None
    return parse_recipe(text, str(path), default_name=path.stem)


def parse_recipe(text: str, where: str = "recipe", *, default_name: str = "recipe") -> Recipe:
    """`load_recipe` on a string; `where` names it in error messages."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        fields = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(
            f"{where}{line}: not valid YAML ({getattr(exc, 'problem', exc)})"
        ) from None
    if not isinstance(fields, dict):
        raise ConfigError(f"{where}: a recipe is a mapping with baseline, stages, ...")
    fields.setdefault("name", default_name)
    try:
        return Recipe.model_validate(fields)
    except ValidationError as exc:
        raise ConfigError(_describe(exc.errors()[0], root, where)) from None
    except Error as exc:  # a config model's own check (a model name, ...) that raised ours
        raise ConfigError(f"{where}: {exc}") from None


def _parse_spec(text: str) -> ModelSpec:
    try:
        return ModelSpec.parse(text)
    except ConfigError as exc:
        raise ValueError(str(exc)) from None


def _describe(error: dict, root: yaml.Node | None, where: str) -> str:
    """'FILE line N: stages[1].config.bits: MESSAGE' for one pydantic error."""
    field, line = _locate(root, error["loc"])
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = "unknown field (a typo?)"
    elif error["type"] == "union_tag_invalid":
        message = f"unknown method {error['input'].get('method')!r}; " + _methods_hint()
    elif error["type"] == "union_tag_not_found":
        message = "a stage needs a method; " + _methods_hint()
    at = f" line {line}" if line else ""
    return f"{where}{at}: {field or 'recipe'}: {message}"


def _locate(node: yaml.Node | None, loc: tuple) -> tuple[str, int | None]:
    """The dotted field name and the 1-based line of a pydantic error location, walking the
    YAML node tree; a step pydantic adds itself (a union's tag) matches no key and is skipped."""
    parts: list[str] = []
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            found = next((v for k, v in node.value if k.value == str(key)), None)
            if found is None:
                if _is_tag(node, str(key)):
                    continue
                parts.append(str(key))  # a missing field: point at its parent
                break
            parts.append(str(key))
            node = found
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int):
            if key >= len(node.value):
                break
            parts[-1:] = [f"{parts[-1]}[{key}]"] if parts else [f"[{key}]"]
            node = node.value[key]
        else:
            parts.append(str(key))
    return ".".join(parts), (node.start_mark.line + 1 if node is not None else None)


def _is_tag(node: yaml.MappingNode, key: str) -> bool:
    """Whether `key` is the tag of a tagged union (`method: quantize`, `kind: std`) that
    pydantic put in the error's path: a value of the mapping, not one of its keys."""
    return any(isinstance(v, yaml.ScalarNode) and v.value == key for _, v in node.value)


def _methods_hint() -> str:
    return "use one of " + ", ".join(sorted(METHOD_NAMES))
