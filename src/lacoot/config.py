"""Every option of a lacoot run, declared once: its default, help text, allowed values and range.

Three dataclasses hold them: :class:`TrainConfig` (the training loop), :class:`CollapseConfig`
(scoring, sweep, budget, repair, latency) and :class:`RunConfig` (what to train on, plus both:
one flat set of keys, the names of the command-line options). Each field is made by
:func:`option`, which records its help text and its check beside its default; validation
(:meth:`Options.validate`), YAML/JSON reading (:meth:`Options.from_dict`) and the ``lacoot``
command's flags (:func:`lacoot.cli.add_options`) are derived from the fields, so a new option is
one field in one class.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import MISSING, Field, dataclass, field, fields
from typing import Any, ClassVar

__all__ = [
    "Option",
    "option",
    "option_spec",
    "Options",
    "TrainConfig",
    "CollapseConfig",
    "RunConfig",
    "DEFAULT_MAX_DROP",
    "DEFAULT_FADE",
    "DEFAULT_TARGET_MACS",
]

DEFAULT_MAX_DROP = 1.0  # percentage points: the budget of `lacoot run` when none is given
DEFAULT_TARGET_MACS = 0.55  # penalise the blocks whose removal brings the MACs to 55%
BUDGETS = ("max_drop", "max_macs", "max_latency", "blocks")  # CollapseConfig's budget options
VAL_FROM = ("val", "train")  # the splits that may score, choose and calibrate
DEFAULT_FADE = 0.6  # fade the blocks meant to go out over the last 60% of the training
# a language model (--model hf:...) takes these where the flag is not given: a patch module
# cannot stand among a decoder's layers (fused folds the maps in), greedy costs n(n+1)/2
# evaluations of the whole validation text, a batch of 128 sequences holds 128 * seq_len * vocab
# logits; a pretrained model is fine-tuned (AdamW at 1e-4), not trained from scratch (SGD at 0.1)
LM_DEFAULTS: dict[str, Any] = {
    "criterion": "msw", "compare": ("cosine",), "repair": "fused", "batch_size": 8,
    "latency_batch_sizes": (1,), "optimizer": "adamw", "lr": 1e-4, "weight_decay": 0.0,
}  # fmt: skip


_NO_LEGACY: Any = type("NoLegacy", (), {"__repr__": lambda self: "<no legacy value>"})()


@dataclass(frozen=True)
class Option:
    """What a field declares besides its default.

    ``choices`` is a tuple of names or a function returning them (a registry); ``label`` makes
    an unknown name read ``unknown <label> 'x'; valid names: ...``; ``canonical``, when given,
    checks a name instead (it accepts aliases and raises on an unknown name). ``check`` returns
    whether a (non-None) value is in range, ``expect`` says what is expected when it is not.
    ``legacy``, when given, is the value that a saved configuration without this option stands
    for (lacoot's behaviour before the option existed), where it differs from the default.
    ``experimental`` options were measured worse than the defaults: they keep working (flags,
    config files, the library) but leave ``--help``; the reference lists them apart.
    """

    help: str
    choices: Sequence[str] | Callable[[], Sequence[str]] | None = None
    label: str | None = None
    canonical: Callable[[str], str] | None = None
    check: Callable[[Any], bool] | None = None
    expect: str = ""
    legacy: Any = _NO_LEGACY  # what a saved configuration written before the option existed meant
    experimental: bool = False  # measured worse than the defaults: out of --help, still accepted

    def names(self) -> tuple[str, ...] | None:
        if self.choices is None:
            return None
        return tuple(self.choices() if callable(self.choices) else self.choices)


def option(default: Any, help: str, **spec: Any) -> Any:
    """A dataclass field with ``default`` and its :class:`Option` (``help`` and ``**spec``)."""
    meta = {"lacoot": Option(help, **spec)}
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def option_spec(f: Field) -> Option:
    """The :class:`Option` of a field made by :func:`option`."""
    return f.metadata["lacoot"]


def default_of(f: Field) -> Any:
    """A field's default value (a fresh one for mutable defaults)."""
    return f.default_factory() if f.default_factory is not MISSING else f.default


def base_type(f: Field) -> str:
    """``int``, ``float``, ``bool``, ``str``, ``dict``, ``tuple[int]`` or ``tuple[str]``: the
    annotation without ``| None``."""
    kind = str(f.type).replace(" | None", "")
    if kind.startswith("tuple["):
        return "tuple[" + kind[len("tuple[") :].split(",")[0] + "]"
    return "dict" if kind.startswith("dict") else kind


def _type_ok(f: Field, value: Any) -> bool:
    if value is None:
        return "None" in str(f.type)
    kind = base_type(f)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind.startswith("tuple"):
        inner = int if kind == "tuple[int]" else str
        return isinstance(value, (list, tuple)) and all(
            isinstance(v, inner) and not isinstance(v, bool) for v in value
        )
    return isinstance(value, {"str": str, "dict": dict}.get(kind, object))


def _one_of(names: Sequence[str]) -> str:
    quoted = [repr(n) for n in names]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]


class Options:
    """Validation, reading and writing shared by the option dataclasses."""

    _what: ClassVar[str] = "options"

    def __post_init__(self) -> None:
        self._normalise()
        self.validate()

    def _normalise(self) -> None:
        """Sequences become tuples (a YAML list, a CLI list): hashable, immutable, one type."""
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if base_type(f).startswith("tuple") and isinstance(value, list):
                setattr(self, f.name, tuple(value))

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first value of a wrong type, unknown or out of range."""
        for f in fields(self):  # type: ignore[arg-type]
            value, spec = getattr(self, f.name), option_spec(f)
            if not _type_ok(f, value):
                raise ValueError(
                    f"option {f.name}={value!r} has type {type(value).__name__}; expected "
                    f"{str(f.type).replace('tuple', 'list')}"
                )
            names = spec.names()
            for v in value if isinstance(value, tuple) else (value,):
                if spec.canonical is not None and v is not None:
                    spec.canonical(v)
                elif names is not None and v is not None and v not in names:
                    if spec.label:
                        which = "" if f.name == spec.label else f" ({f.name}={v!r})"
                        raise ValueError(f"unknown {spec.label} {v!r}{which}; valid names: "
                                         f"{', '.join(names)}")  # fmt: skip
                    raise ValueError(f"{f.name}={v!r}; expected {_one_of(names)}")
            if spec.check is not None and value is not None and not spec.check(value):
                raise ValueError(f"{f.name}={value!r}; expected {spec.expect}")
        self._check()

    def _check(self) -> None:
        """Checks across options (subclasses extend it and call ``super()._check()``)."""

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Any:
        """Build from a mapping (a YAML file, a saved run); unknown keys are an error naming them
        and the known ones, a value of a wrong type an error naming it."""
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown {cls._what} {unknown}; expected some of {sorted(known)}")
        return cls(**values)

    @classmethod
    def from_saved(cls, values: dict[str, Any]) -> Any:
        """Build from a mapping that lacoot wrote (a checkpoint's): an option it lacks takes
        its ``legacy`` value where one is declared (the behaviour of the lacoot that wrote it),
        else its default."""
        legacy = {f.name: option_spec(f).legacy for f in fields(cls)}  # type: ignore[arg-type]
        missing = {k: v for k, v in legacy.items() if k not in values and v is not _NO_LEGACY}
        return cls.from_dict({**missing, **values})

    def to_dict(self) -> dict[str, Any]:
        """The options as plain JSON/YAML values (tuples as lists)."""
        out: dict[str, Any] = {}
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    def subset(self, cls: type) -> Any:
        """The options of ``cls`` (a base of this class) taken from this one."""
        return cls(**{f.name: getattr(self, f.name) for f in fields(cls)})


def _criteria() -> tuple[str, ...]:
    from .criteria import list_criteria

    return tuple(list_criteria())


def _distances() -> tuple[str, ...]:
    from .regularizer import DISTANCES

    return DISTANCES


def _datasets() -> tuple[str, ...]:
    from .data import DATASETS

    return DATASETS


def _canonical_dataset(name: str) -> str:
    from .data import canonical_name

    return canonical_name(name)  # raises with the valid names


def _models() -> tuple[str, ...]:
    from .models import list_models

    return tuple(list_models())


def _canonical_model(name: str) -> str:
    from .model_source import canonical_model

    return canonical_model(name)  # raises with the valid names and prefixes


def _repairs() -> tuple[str, ...]:
    from .repair import REPAIRS

    return REPAIRS


def _positive(v: float) -> bool:
    return v > 0


def _finite_positive(v: float) -> bool:
    return v > 0 and math.isfinite(v)


def _count(v: int) -> bool:
    return v >= 1


PENALTY_AIMS = ("target_blocks", "target_macs", "penalize", "escalate", "fade")  # need lam > 0


@dataclass
class TrainConfig(Options):
    """Hyper-parameters of one training run (the defaults are the ones measured best:
    docs/benchmarks/collapse_quality.md)."""

    _what: ClassVar[str] = "training options"

    epochs: int = option(4, "training epochs (passes over the training split)", check=_count,
                         expect="an integer > 0")  # fmt: skip
    lam: float = option(
        1.0, "weight lambda of the MSW penalty (0: vanilla training)",
        check=lambda v: v >= 0 and math.isfinite(v), expect="lam >= 0",
    )  # fmt: skip
    lam_warmup: float = option(
        0.0, "epochs over which lambda rises linearly from 0 to --lam, step by step (0: the "
        "full lambda from the first step)", check=lambda v: v >= 0 and math.isfinite(v),
        expect="a number of epochs >= 0", experimental=True,
    )  # fmt: skip
    optimizer: str = option("sgd", "optimiser: sgd (momentum, nesterov) or adamw",
                            choices=("sgd", "adamw"))  # fmt: skip
    lr: float = option(0.1, "peak learning rate", check=_finite_positive,
                       expect="a finite learning rate > 0, such as 0.1")  # fmt: skip
    momentum: float = option(0.9, "SGD momentum", check=lambda v: 0 <= v < 1,
                             expect="0 <= momentum < 1")  # fmt: skip
    nesterov: bool = option(True, "Nesterov momentum")
    weight_decay: float = option(5e-4, "weight decay", check=lambda v: v >= 0, expect=">= 0")
    schedule: str = option("onecycle", "learning-rate schedule (per step)",
                           choices=("multistep", "cosine", "onecycle", "constant"))  # fmt: skip
    milestones: tuple[int, ...] = option(
        (80, 120), "multistep: epochs at which lr is multiplied by gamma"
    )
    gamma: float = option(0.1, "multistep: lr factor", check=lambda v: 0 < v <= 1,
                          expect="0 < gamma <= 1")  # fmt: skip
    seed: int = option(0, "random seed (recorded with the results)")
    amp: bool = option(True, "bfloat16 mixed precision (autocast) on CUDA only")
    method: str = option("random", "MSW estimator during training (random: 50 directions, as "
                         "the paper)", choices=("ascent", "random"))  # fmt: skip
    n_projections: int = option(50, "random directions of the random estimator", check=_count,
                                expect=">= 1")  # fmt: skip
    penalty_every: int = option(
        1, "compute the penalty on every N-th step only, weighted N times (lazy regularisation: "
        "the same mean pull for 1/N of its cost)", check=_count, expect="a step count >= 1",
        experimental=True,
    )  # fmt: skip
    n_iters: int = option(2, "ascent steps per training step", check=lambda v: v >= 0,
                          expect=">= 0")  # fmt: skip
    channels_last: bool = option(True, "channels-last memory format for the model and its 4-D "
                                 "inputs (measured 22% faster training on CPU: "
                                 "docs/benchmarks/train_speed.md)")  # fmt: skip
    compile: bool = option(
        False, "torch.compile the model for training (the penalty's hooks are attached first; "
        "compiled again when a budget's targets are chosen)",
    )  # fmt: skip
    grad_clip: float | None = option(None, "largest gradient norm (none: no clipping)",
                                     check=_positive, expect="> 0")  # fmt: skip
    nonfinite: str = option("stop", "on a non-finite loss: stop (keep the last checkpoint) or "
                            "skip the batch", choices=("stop", "skip"))  # fmt: skip
    global_msw: bool = option(False, "under torchrun: the MSW penalty on the global batch "
                              "(features of all processes gathered)")  # fmt: skip
    sync_bn: bool = option(False, "under torchrun: batch-norm statistics over the global batch")
    distance: str = option("msw", "block distance of the penalty: msw (LaCoOT) or cosine (1 - "
                           "mean cosine of each sample's output and input; not the paper's)",
                           choices=_distances)  # fmt: skip
    relative: bool = option(False, "divide each block's MSW by its input's principal spread "
                            "(scale-free penalty)")  # fmt: skip
    stop_input_grad: bool = option(False, "treat each block's input as a fixed target of the "
                                   "penalty: MSW(stop_grad(X), Y) moves the output towards the "
                                   "input, not the input towards the output",
                                   experimental=True)  # fmt: skip
    penalize: tuple[str, ...] = option((), "glob patterns of the blocks to penalise, e.g. "
                                       "'layer*.2' (default: all blocks)")  # fmt: skip
    target_blocks: int | None = option(
        None, "penalise only the K blocks ranked cheapest to remove after the warm-up",
        check=_count, expect="a count >= 1",
    )  # fmt: skip
    target_macs: float | None = option(
        DEFAULT_TARGET_MACS, "penalise only the blocks whose removal brings the MACs to this "
        "fraction (1: no budget, every block penalised; yields to --penalize and "
        "--target-blocks)", check=lambda v: 0 < v <= 1, expect="a fraction in (0, 1] (1: no "
        "budget)",
    )  # fmt: skip
    target_warmup: int = option(
        1, "epochs with every block penalised before the targets are chosen (at most epochs - 1)",
        check=lambda v: v >= 0, expect="an integer >= 0 (epochs)",
    )  # fmt: skip
    escalate: float | None = option(
        None, "treat the penalised blocks (a budget's targets or --penalize) as constraints: each "
        "block's own weight doubles every epoch while its influence (1 - mean cosine of its "
        "output and input) is above this value, and falls back towards 1 once below; at most "
        "64 (regularizer.MAX_WEIGHT) and at most the peak learning rate over the current one (no "
        "escalation under a constant schedule)",
        check=lambda v: v >= 0 and math.isfinite(v), expect="an influence >= 0, such as 0.001",
        experimental=True,
    )  # fmt: skip
    fade: float = option(
        DEFAULT_FADE, "fade the blocks meant to go (a budget's targets or --penalize) out over "
        "this fraction of the training at its end: each one's output is blended towards its "
        "input, the blend rising linearly over the first half of that span and held at the "
        "identity for the second half, so the training ends without them (0: no fade; the "
        "default yields to a run with no block meant to go)",
        check=lambda v: 0 <= v < 1, expect="a fraction in [0, 1), such as 0.4", legacy=0.0,
    )  # fmt: skip
    distill_weight: float = option(
        0.0, "weight w of knowledge distillation from --teacher: the loss is (1 - w) * "
        "cross-entropy + w * T^2 * KL(teacher || student) at temperature T (0: none)",
        check=lambda v: 0 <= v <= 1, expect="a weight in [0, 1]",
    )  # fmt: skip
    distill_temperature: float = option(
        4.0, "temperature T of the distillation", check=_finite_positive,
        expect="a temperature > 0",
    )  # fmt: skip
    target_criterion: str = option("msw_rel", "criterion that ranks the blocks when the targets "
                                   "are chosen", choices=_criteria, label="criterion")  # fmt: skip
    target_keep_deep: bool = option(
        False, "a budget keeps at least one block of the two deepest stages (groups of blocks "
        "with the same feature shape): the block that would empty both goes last",
    )  # fmt: skip

    def _normalise(self) -> None:
        super()._normalise()
        if (self.lam == 0 or self.penalize or self.target_blocks is not None) and (
            self.target_macs == DEFAULT_TARGET_MACS
        ):  # the default budget yields to vanilla training and to the blocks the user names
            self.target_macs = None
        if self.fade == DEFAULT_FADE and not self.aimed:
            self.fade = 0.0  # the default fade yields to a run with no block meant to go

    def _check(self) -> None:
        unset = (None, (), 0.0, 1.0, DEFAULT_FADE)  # the values that aim at nothing
        aims = [f"{k}={getattr(self, k)!r}" for k in PENALTY_AIMS if getattr(self, k) not in unset]
        if self.lam == 0 and aims:
            raise ValueError(
                f"lam=0 trains without the penalty (vanilla), but {', '.join(aims)} aim or fade "
                "it; expected lam > 0, or none of them"
            )
        if self.target_blocks is not None and self.target_macs and self.target_macs < 1:
            raise ValueError(
                f"target_blocks={self.target_blocks!r} and target_macs={self.target_macs!r}; "
                "expected at most one budget"
            )
        from .regularizer import check_distance

        check_distance(self.distance, self.relative)
        if self.escalate is not None and not self.aimed:
            raise ValueError(
                f"escalate={self.escalate!r} pulls harder on the blocks meant to go, but every "
                "block is penalised; expected a budget (target_blocks/target_macs) or penalize"
            )
        if self.fade and not self.aimed:
            raise ValueError(
                f"fade={self.fade!r} fades out the blocks meant to go, but no block is meant to "
                "go; expected a budget (target_blocks/target_macs) or penalize"
            )
        if self.targeted and self.penalize:  # penalize with target_macs=1 is fine
            raise ValueError(
                "penalize and target_blocks/target_macs both choose the penalised blocks; "
                "expected one of them"
            )
        super()._check()

    @property
    def aimed(self) -> bool:
        """Whether some blocks are meant to go (a budget's targets or ``penalize``): what
        ``escalate`` and ``fade`` act on."""
        return self.targeted or bool(self.penalize)

    @property
    def targeted(self) -> bool:
        """Whether the penalised blocks are chosen by a budget during training."""
        return self.target_blocks is not None or (
            self.target_macs is not None and self.target_macs < 1
        )

    @classmethod
    def differences(cls, saved: Any, cfg: TrainConfig) -> list[str]:
        """How a checkpoint's ``train_config`` mapping differs from the run ``cfg``, one
        ``name=saved (now now)`` per option (read with :meth:`from_saved`: an option added to
        lacoot after the checkpoint was written means what the older lacoot did); empty when
        they describe the same run."""
        try:
            then = cls.from_saved(dict(saved)).to_dict()
        except (TypeError, ValueError) as exc:
            return [f"its train_config cannot be read ({exc})"]
        now = cfg.to_dict()
        return [f"{k}={then[k]!r} (now {now[k]!r})" for k in now if then[k] != now[k]]


@dataclass
class CollapseConfig(Options):
    """How a trained model is scored, swept, repaired, timed and cut to a budget."""

    _what: ClassVar[str] = "collapse options"

    criterion: str = option("greedy", "block order", choices=_criteria, label="criterion")
    compare: tuple[str, ...] = option(("cosine",), "other block orders measured for comparison",
                                      choices=_criteria, label="criterion")  # fmt: skip
    max_drop: float | None = option(
        None, "largest validation-accuracy drop allowed, in percentage points, from the full "
        "model or, when the training faded blocks out and that is better, from the model "
        f"without them (run: {DEFAULT_MAX_DROP} when no other budget is given)",
        check=lambda v: v >= 0,
        expect=">= 0 percentage points",
    )  # fmt: skip
    max_macs: float | None = option(None, "largest MACs allowed, as a fraction of the full "
                                    "model's", check=lambda v: 0 < v <= 1,
                                    expect="a fraction in (0, 1]")  # fmt: skip
    max_latency: float | None = option(
        None, "largest measured latency allowed, as a fraction of the full model's at the "
        "largest --latency-batch-sizes batch (the most accurate collapse within it is chosen)",
        check=lambda v: 0 < v <= 1, expect="a fraction in (0, 1]",
    )  # fmt: skip
    blocks: int | None = option(None, "remove exactly this many blocks", check=lambda v: v >= 0,
                                expect="a count >= 0")  # fmt: skip
    repair: str = option("linear", "training-free repair of each collapse: none, bn "
                         "(re-estimated batch norm) or linear (least-squares 1x1 patches, then "
                         "bn)", choices=_repairs)  # fmt: skip
    calib_samples: int = option(2048, "calibration images (validation split) of each repair",
                                check=_count, expect="an integer >= 1")  # fmt: skip
    latency_batch_sizes: tuple[int, ...] = option(
        (1, 128), "batch sizes at which latency is measured",
        check=lambda v: all(b >= 1 for b in v), expect="batch sizes >= 1",
    )  # fmt: skip
    latency_repeats: int = option(10, "timed repeats per latency measurement (median reported)",
                                  check=_count, expect=">= 1")  # fmt: skip

    @property
    def has_budget(self) -> bool:
        return any(getattr(self, b) is not None for b in BUDGETS)

    @classmethod
    def lm_defaults(cls) -> dict[str, Any]:
        """The collapse options that :data:`LM_DEFAULTS` sets for a language model."""
        return {k: v for k, v in LM_DEFAULTS.items() if k in cls.__dataclass_fields__}

    def or_default_budget(self) -> CollapseConfig:
        """These options, with ``max_drop = DEFAULT_MAX_DROP`` when no budget is given."""
        if self.has_budget:
            return self
        return type(self)(**{**self.__dict__, "max_drop": DEFAULT_MAX_DROP})


@dataclass
class _Job(Options):
    """What a run trains on and where it writes."""

    model: str = option(
        "resnet20", "zoo model name, or a model of another library: hf:FOLDER or hf:FILE.gguf (a "
        "Hugging Face causal LM and its tokenizer), timm:NAME, torchvision:NAME",
        choices=_models, canonical=_canonical_model, label="model",
    )  # fmt: skip
    model_args: dict[str, Any] = option({}, "extra model constructor argument KEY=VALUE "
                                        "(repeatable), e.g. stem=imagenet")  # fmt: skip
    dataset: str = option("fashion-mnist", "dataset", choices=_datasets,
                          canonical=_canonical_dataset)  # fmt: skip
    data_dir: str | None = option(None, "folder of the dataset files (none: $LACOOT_DATA, "
                                  "then system folders)")  # fmt: skip
    seq_len: int = option(256, "text: tokens per sequence (each chunk of the corpus holds one "
                          "more, the last next-token target)", check=_count,
                          expect="a token count >= 1")  # fmt: skip
    test_fraction: float = option(0.1, "text: fraction of the chunks held out for test",
                                  check=lambda v: 0 < v < 1,
                                  expect="0 < value < 1")  # fmt: skip
    init: str | None = option(
        None, "start the training from these weights: a lacoot checkpoint, a state_dict .pt or "
        ".safetensors file whose keys match the model's exactly (sha256 recorded)",
    )  # fmt: skip
    teacher: str | None = option(
        None, "the model to distil from (with --distill-weight): a checkpoint of lacoot train or "
        "a model file of lacoot export (.pt), trained on the same data; for a language model "
        "hf:FOLDER, hf:FILE.gguf or a checkpoint of lacoot train on one, with the same "
        "tokenizer (sha256 recorded)",
    )  # fmt: skip
    val_fraction: float = option(0.1, "fraction of the training set held out for validation "
                                 "and scoring", check=lambda v: 0 <= v < 1,
                                 expect="0 <= value < 1")  # fmt: skip
    val_from: str = option(
        "val", "the split that scores the blocks, chooses the collapse and calibrates the repair: "
        "val (held out by --val-fraction) or train (only with --val-fraction 0; the report says "
        "that its accuracies are of the training split)", choices=VAL_FROM,
    )  # fmt: skip
    batch_size: int = option(128, "training batch size (the global batch under torchrun)",
                             check=lambda v: v >= 2, expect="an integer >= 2")  # fmt: skip
    augment: bool = option(True, "random crop with padding (+ flip where label-preserving) on "
                           "the training batches")  # fmt: skip
    device: str = option("auto", "cpu, cuda, cuda:N or auto")
    out: str = option("runs/lacoot", "output folder (checkpoint, logs, report)")
    progress: bool = option(True, "progress bars and phase lines")


@dataclass
class RunConfig(CollapseConfig, TrainConfig, _Job):
    """Everything one ``lacoot`` run depends on (flat: the keys are the command-line options)."""

    _what: ClassVar[str] = "options"

    def train_config(self) -> TrainConfig:
        return self.subset(TrainConfig)

    def collapse_config(self) -> CollapseConfig:
        return self.subset(CollapseConfig)

    def _check(self) -> None:
        if (self.teacher is None) != (self.distill_weight == 0):
            raise ValueError(
                f"teacher={self.teacher!r} with distill_weight={self.distill_weight!r}; expected "
                "both (--teacher PATH --distill-weight W, W > 0) or neither"
            )
        if self.val_from == "train" and self.val_fraction > 0:
            raise ValueError(
                f"val_from='train' with val_fraction={self.val_fraction!r}: a validation split "
                "is held out, so it scores and chooses; expected val_from='val', or "
                "val_fraction=0"
            )
        super()._check()

    def check_val_split(self, what: str) -> None:
        """``ValueError`` when ``what`` (a step that scores or chooses) would run on the
        training split without ``val_from='train'`` saying so."""
        if self.val_fraction == 0 and self.val_from != "train":
            raise ValueError(
                f"val_fraction=0 holds out no validation split, but {what}; expected "
                "val_fraction > 0 (such as 0.1), or val_from='train' to use the training split "
                "(the report then says so)"
            )

    def data_spec(self) -> dict[str, Any]:
        spec = {
            "dataset": self.dataset,
            "data_dir": self.data_dir,
            "val_fraction": self.val_fraction,
            "split_seed": self.seed,
            "batch_size": self.batch_size,
            "augment": self.augment,
        }
        if self.dataset == "text":
            spec |= {"seq_len": self.seq_len, "test_fraction": self.test_fraction}
        return spec
