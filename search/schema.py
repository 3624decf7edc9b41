"""The typed schema of a composed config: one strict model per section, checked before anything is written.

Hydra composes the YAML; this schema types it. Every key of `search`, `trainer`, `tracking`,
`dataset` and `optim` has a type here (pydantic, strict: a bool is not a number and `"abc"` is
not a timeout), so a bad value stops the command with one line naming the key, whether it
came from the command line, a YAML file or a config read back from a run. The `optim`
section is typed by `OptimSpec` itself, so the spec and the schema cannot drift apart. The
search space has its own validator (search/space.py), which names the file; sampler and
pruner are checked by building them through the allow-list.

`untyped_keys` lists the keys a config holds that the schema does not type: a test keeps it
empty for every shipped option, so a new YAML key cannot slip in untyped.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Annotated, Any, Literal, Optional, Union

from omegaconf import DictConfig, OmegaConf
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator

from convsweep.errors import ConvsweepError
from convsweep.lightning_modules.arch import OptimSpec


class ConfigTypeError(ConvsweepError):
    """A config value has the wrong type or is out of range."""


class Section(BaseModel):
    """Strict types; keys this schema does not know are left to Hydra (unknown keys) and `untyped_keys` (tests)."""

    model_config = ConfigDict(strict=True, extra="allow")


def _unmasked(uri: Optional[str]) -> Optional[str]:
    """A URI copied from something masked would connect with the password `***`."""
    if uri and ("***@" in uri or "=***" in uri):
        raise ValueError("holds a masked password (***): give the real URI on the command line or in the "
                         "environment (CONVSWEEP_OPTUNA_STORAGE, CONVSWEEP_MLFLOW_URI, CONVSWEEP_ARTIFACT_LOCATION)")
    return uri


AutoBool = Union[Literal["auto"], bool]  # auto = decided per device (see conf/trainer/default.yaml)
PosInt = Annotated[int, Field(ge=1)]
NonNegInt = Annotated[int, Field(ge=0)]
PosFloat = Annotated[float, Field(gt=0)]
Fraction = Annotated[float, Field(ge=0, lt=1)]
Uri = Annotated[Optional[str], AfterValidator(_unmasked)]


class SearchSchema(Section):
    study_name: Union[str, int]  # `search.study_name=2024` is a name too
    n_trials: PosInt
    timeout: Optional[PosFloat]  # seconds
    direction: Literal["maximize", "minimize"]
    metric: str  # one of the metrics a trial logs: checked against them in preflight
    seed: int
    n_workers: Union[Literal["auto"], PosInt]  # auto: resolved in preflight (lightning_modules/worker_budget.py)
    ask_ahead: Union[Literal["auto"], bool]  # auto: resolved in preflight (`resolve_ask_ahead`)
    log_models: Literal["best", "all", "none"]
    top_k_views: NonNegInt
    fail_on_collapse: Literal["pruned", "failed"]
    max_macs: Optional[PosFloat]  # multiply-accumulates per image
    max_params: Optional[PosFloat]  # weights per net
    max_refused: NonNegInt  # refusals before training that do not count toward n_trials
    objectives: list[str]  # NAME:DIRECTION, checked in preflight
    enqueue: list[str]  # conf/arch names run first, checked in preflight
    retry_lost: bool  # run a lost trial's params again
    heartbeat_interval: PosInt  # seconds between a running trial's heartbeats
    grace_period: PosInt  # seconds without a heartbeat before a trial counts as lost


class TrainerSchema(Section):
    max_epochs: PosInt
    max_steps: Optional[PosInt]
    accelerator: Literal["auto", "cpu", "gpu", "cuda"]
    devices: PosInt
    precision: Literal["auto", "bf16-mixed", "bf16", "32-true", "32"]
    deterministic: AutoBool
    channels_last: AutoBool
    cuda_graphs: AutoBool
    chunk_steps: PosInt
    val_batch_size: Union[Literal["auto"], PosInt]
    cudnn_benchmark: AutoBool
    compile: bool
    limit_train_batches: Optional[Union[PosInt, Annotated[float, Field(gt=0, le=1)]]]  # steps, or a fraction
    gradient_clip_val: Optional[PosFloat]
    num_threads: Optional[PosInt]


class TrackingSchema(Section):
    run_dir: str
    optuna_storage: Uri
    mlflow_uri: Uri
    artifact_location: Uri
    experiment_name: Union[str, int]


class AugmentSchema(Section):
    crop_padding: NonNegInt  # pixels
    hflip: bool


class DatasetSchema(Section):
    """Every dataset's keys. Those with `= None` belong to some options (conf/dataset/*.yaml) only: absent is
    fine, present must fit (pydantic does not check a default)."""

    name: str
    root: Optional[str]
    seed: int  # split (and, for shapes, generation) seed
    augment: AugmentSchema
    download: bool = None
    val_fraction: Fraction = None
    test_fraction: Fraction = None
    image_size: PosInt = None  # pixels per side
    channels: Optional[Literal[1, 3]] = None  # null = inferred
    on_corrupt: Literal["skip", "fail"] = None
    max_device_bytes: PosFloat = None
    num_workers: NonNegInt = None  # DataLoader workers of the fallback path
    max_epochs: PosInt = None  # epochs per trial for this dataset (trainer.max_epochs reads it)
    n_train: PosInt = None
    n_val: PosInt = None
    n_test: PosInt = None
    n_classes: PosInt = None
    noise: Annotated[float, Field(ge=0)] = None  # std in [0, 1] intensity units


def spec_schema(spec: type) -> type[Section]:
    """A strict model over a spec dataclass's fields and types that also runs the spec's own value checks."""
    hints = typing.get_type_hints(spec)
    fields = {f.name: (hints[f.name], f.default) for f in dataclasses.fields(spec)}

    def build(model: BaseModel) -> BaseModel:
        spec(**model.model_dump(include=set(fields)))  # its __post_init__ raises SpecError (a ValueError)
        return model

    return create_model(f"{spec.__name__}Schema", __base__=Section,
                        __validators__={"spec_checks": model_validator(mode="after")(build)}, **fields)


class ConfigSchema(Section):
    """The whole composed config."""

    search: SearchSchema
    trainer: TrainerSchema
    tracking: TrackingSchema
    dataset: DatasetSchema
    optim: spec_schema(OptimSpec)  # type: ignore[valid-type]
    seed: int  # seeds `convsweep train`; a trial's config holds its own
    arch: dict  # ArchSpec.from_dict checks it (unknown keys, values)
    search_space: dict  # search/space.py checks it and names the file
    sampler: dict  # built through the allow-list in preflight
    pruner: dict
    choices: dict = None  # the group options the config was composed with (absent in an older stored config)


def check_config(cfg: DictConfig) -> None:
    """Refuse a config whose values do not fit the schema, in one line naming the key.

    Raises:
        ConfigTypeError: e.g. `search.timeout must be a number > 0, or null (got 'abc')`.
    """
    data = OmegaConf.to_container(cfg, resolve=True)
    try:
        ConfigSchema.model_validate(data)
    except ValidationError as exc:
        raise ConfigTypeError(_explain(exc.errors()[0], data)) from None


def _explain(error: dict, data: dict) -> str:
    """One line from pydantic's first error: the dotted key, what it must be, and the value given."""
    model: Any = ConfigSchema
    path: list[str] = []
    value: Any = data
    expected: Any = None
    for part in error["loc"]:
        fields = getattr(model, "model_fields", {})
        if part not in fields:
            break  # the rest of `loc` names union members (e.g. `literal['auto']`), not keys
        path.append(str(part))
        field = fields[part]
        value = value.get(part) if isinstance(value, dict) else None
        model = field.annotation
        expected = Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation
    key = ".".join(path) or "config"
    if error["type"] == "missing":
        return f"{key} is missing; `convsweep config` prints every key with its default"
    if error["type"] == "value_error":  # a check of our own: its message says what is wrong
        got = "" if isinstance(value, dict) else f" (got {value!r})"
        return f"{key}: {str(error['msg']).removeprefix('Value error, ')}{got}"
    return f"{key} must be {describe(expected)} (got {value!r})"


def describe(annotation: Any) -> str:
    """A type in words, for error messages: `Optional[PosFloat]` -> 'a number > 0, or null'."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Annotated:
        metadata = [m for a in args[1:] for m in getattr(a, "metadata", [a])]  # Field(ge=1) holds Ge(1)
        bounds = [f"{op} {getattr(m, attr)}" for m in metadata for attr, op in
                  (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")) if getattr(m, attr, None) is not None]
        base = describe(args[0])
        return f"{base} {' and '.join(bounds)}" if bounds else base
    if origin is Literal:
        words = ["true" if a is True else "false" if a is False else str(a) for a in args]
        return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"
    if origin is Union:
        parts = [describe(a) for a in args if a is not type(None)]
        text = parts[-1] if len(parts) == 1 else \
            ", ".join(parts[:-1]) + (", " if " or " in parts[-1] else " or ") + parts[-1]
        return f"{text}, or null" if type(None) in args else text
    if origin is list:  # `list[str]` -> 'a list of strings, e.g. [a,b]'
        item = describe(args[0]).removeprefix("an ").removeprefix("a ") if args else "value"
        return f"a list of {item}s, e.g. [a,b]"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string", dict: "a mapping"}.get(
        annotation, getattr(annotation, "__name__", str(annotation)))


def untyped_keys(cfg: DictConfig) -> list[str]:
    """Dotted keys of `cfg` that no schema field types (sections typed as a plain mapping are checked elsewhere)."""
    out: list[str] = []

    def walk(model: type[BaseModel], node: dict, prefix: str) -> None:
        for key, value in node.items():
            field = model.model_fields.get(str(key))
            if field is None:
                out.append(f"{prefix}{key}")
            elif isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel) and isinstance(value, dict):
                walk(field.annotation, value, f"{prefix}{key}.")

    walk(ConfigSchema, OmegaConf.to_container(cfg, resolve=True), "")
    return out
