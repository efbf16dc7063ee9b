"""What every method is: a named, registered source of the encoder weights fine-tuning starts from.

``Method`` holds the name, kind, hyperparameters (``Params``) and search space (Optuna
distributions); ``Baseline`` methods
return their weights directly (``encoder_state``); SSL methods (``bench.ssl.base.SSLMethod``) are
pretrained by the engine (``bench.ssl.engine.encoder_for`` handles both kinds).
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from optuna.distributions import BaseDistribution

from bench.core.errors import BenchError
from bench.data.cards import NATIVE, DatasetCard, ScaleSpec
from bench.data.images import LabeledImage
from bench.models.encoders import EncoderState


@dataclass
class EncoderContext:
    """What a method may use to build its encoder weights for one run."""

    card: DatasetCard
    data_root: Path
    encoder: str
    init: str
    profile: str
    seed: int
    device: torch.device
    cache_dir: Path
    shots: list[LabeledImage] = field(default_factory=list)
    draw: int = 0
    compile: str = "off"
    split: str | None = None
    """The dataset split of the run (a pool drawn from a split's training images depends on it)."""
    scale: ScaleSpec = NATIVE
    """The run's working scale: the pool is brought to it before views are cut."""
    arch: str = "unet"
    """The fine-tuning architecture (a method that pretrains a decoder pretrains this one's)."""
    pool: str = "honest"
    """The SSL pool mode (``bench.data.pool``): ``honest`` leaves out near-duplicates of the split's
    validation and test images; ``transductive`` keeps them."""
    precision: str = "fp32"
    """``--precision`` of the run (``bench.core.precision``): the pretraining's forward passes."""
    pool_names: tuple[str, ...] = ()
    """Set by the engine: what each pool image is (a split's stem, or ``unlabeled/<file>``), so
    methods can tell a shot that is also a pool image and size queues to the pool."""


@dataclass(frozen=True)
class NoParams:
    """A method without tunable hyperparameters."""


SearchSpace = dict[str, BaseDistribution]
"""What ``bench tune`` searches: parameter name → an ``optuna.distributions`` distribution
(``FloatDistribution``, ``IntDistribution`` or ``CategoricalDistribution``, which check their own
bounds, log scale and step)."""


def contains(dist: BaseDistribution, value: Any) -> bool:
    """Whether ``value`` is a point of ``dist`` (in range, on its step, one of its choices)."""
    try:
        return bool(dist._contains(dist.to_internal_repr(value)))
    except (TypeError, ValueError):
        return False


class Method(ABC):
    """Base class: subclasses set ``name`` and ``description``.

    ``kind`` is ``supervised`` for baselines (no pretraining) and ``ssl`` for pretraining methods.
    ``uses_labels`` marks methods whose pretraining sees the labeled shots (their cache key then
    includes the draw). ``Params`` is a dataclass of the method's hyperparameters.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    kind: ClassVar[str] = "ssl"
    uses_labels: ClassVar[bool] = False
    fixed_init: ClassVar[str | None] = None
    Params: ClassVar[type] = NoParams

    def __init__(self, params: dict[str, Any] | None = None) -> None:
        self.params = build_params(self.Params, params or {}, self.name)

    def init_for(self, requested: str) -> str:
        """The encoder initialisation actually used (baselines fix theirs)."""
        return self.fixed_init or requested

    def params_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self.params)

    @classmethod
    def search_space(cls, profile: str) -> SearchSpace:
        """The method's own part of what ``bench tune`` searches at this profile.

        Keys are ``Params`` fields or, for SSL methods, pretraining-loop settings (``lr``,
        ``weight_decay``... see ``bench.ssl.config.PretrainConfig``): anything ``--param``
        accepts. Never the amount of compute (steps, epochs): every trial and method trains as
        long. Fine-tuning settings are searched for every method, baselines included
        (``bench.sweeps.tune.finetune_space``). Empty: nothing of the method's own to tune.
        """
        return {}

    def pretrain_config(self, ctx: EncoderContext) -> dict[str, Any] | None:
        """Everything that determines this method's pretraining, or None without pretraining."""
        return None


class Baseline(Method):
    """A supervised baseline: fixed starting weights, no pretraining."""

    kind: ClassVar[str] = "supervised"

    @abstractmethod
    def encoder_state(self, ctx: EncoderContext) -> EncoderState | None:
        """Weights for the segmentation encoder (smp key names), or None for random init."""


def build_params(params_cls: type, values: dict[str, Any], method: str) -> Any:
    """Instantiate a method's params dataclass, with a clear error for unknown/ill-typed values."""
    known = {f.name: f for f in dataclasses.fields(params_cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise BenchError(
            f"method '{method}' has no parameter(s) {', '.join(unknown)}; "
            f"parameters: {', '.join(known) or 'none'}"
        )
    converted = {}
    for key, value in values.items():
        default = getattr(params_cls(), key)
        try:
            converted[key] = _coerce(value, type(default))
        except (TypeError, ValueError):
            raise BenchError(
                f"method '{method}': parameter {key}={value!r} is not {_a(type(default).__name__)}"
            ) from None
    return params_cls(**converted)


def _coerce(value: Any, target: type) -> Any:
    if target is bool and isinstance(value, str):
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(value)
    if target in (int, float, str, bool):
        return target(value)
    return value


def _a(noun: str) -> str:
    """``noun`` with its indefinite article: "an int", "a float"."""
    return f"{'an' if noun[:1] in 'aeiou' else 'a'} {noun}"
