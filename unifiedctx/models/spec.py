"""The stage spec: every per-stage setting of a network, its default and its check, in one place.

A network (:class:`~unifiedctx.models.network.ContextNet`) is a list of stages; stage ``s`` is

    embed_s:  conv k x k, stride S (k = ``embed_kernel`` or S), then ``embed_norm``   (B, C_s, H/S, W/S)
    depth_s blocks:  x + pos(x);  x + gamma * mixer(norm(x));  x + gamma * mlp(norm(x))

and :class:`StageSpec` names each number and choice in that picture. ``StageSpec.to_dict()`` is
what ``model.config["stages"]`` stores (plain JSON); ``StageSpec.from_dict(d)`` reads it back,
filling defaults, so stage dicts written before the spec existed keep loading. ``STAGE_REQUIRED``,
``STAGE_DEFAULTS`` and the ``create_model`` per-stage overrides are all read from the fields here.

:func:`merge_mixer` is the one rule for overriding a stage's mixer and its options: options
merge into the stage's own, a new mixer keeps only the options it takes, and nothing the user
gave is dropped silently.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import json
from dataclasses import MISSING, InitVar, dataclass, field

from ..validation import check_bool, check_choice, check_float, check_positive_int
from .layers import NORMS


def _setting(default=MISSING, *, help: str, check):
    """A spec field: its default, a one-line help and ``check(name, value) -> value``."""
    if isinstance(default, dict):
        return field(default_factory=lambda: copy.deepcopy(default), metadata={"help": help, "check": check})
    return field(default=default, metadata={"help": help, "check": check})


def _optional(check):
    return lambda name, value: None if value is None else check(name, value)


def _mixer_name(name, value) -> str:
    """A registered mixer name; an old alias (``"mixer"``) becomes the name it stands for."""
    from .. import mixers

    aliases = getattr(mixers, "ALIASES", {})  # the registry's renamed keys, where it has any
    if isinstance(value, str) and value in aliases:
        return aliases[value]
    return check_choice(name, value, mixers.available())


def mixer_options_dict(name, value) -> dict:
    """A deep copy of ``value`` if it is a dict of option name -> value (else a ``TypeError``)."""
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise TypeError(f"{name} must be a dict of option name -> value, "
                        f"got {type(value).__name__} {value!r}")
    return copy.deepcopy(value)


def _positive_float(name, value) -> float:
    return check_float(name, value, low=0, low_open=True)


def mixer_takes(mixer: str) -> tuple[str, ...]:
    """The options the registered mixer ``mixer`` takes, read from its class's signature (by the
    registry's ``options_of`` where it has one)."""
    from .. import mixers

    if hasattr(mixers, "options_of"):
        return tuple(mixers.options_of(mixer))
    cls = mixers.REGISTRY[mixer]
    return tuple(p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "dim"))


def shared_options() -> tuple[str, ...]:
    """Options any mixer accepts, ignored where unused (``heads``, ``kernel_size``, ``grid``)."""
    from .. import mixers

    return tuple(mixers.SHARED_OPTIONS)


@dataclass(frozen=True)
class StageSpec:
    """One stage of a :class:`~unifiedctx.models.network.ContextNet` (see the module docstring).

    Every field is checked when the spec is made (``TypeError``/``ValueError`` naming it; with
    ``where="stages[2]"`` the message starts ``stages[2]['dim']: ...``). ``where`` is not stored.
    """

    dim: int = _setting(help="channels C of the stage", check=check_positive_int)
    depth: int = _setting(help="number of blocks", check=check_positive_int)
    stride: int = _setting(help="stride S of the stage's patch embedding (the grid shrinks by S)",
                           check=check_positive_int)
    mixer: str = _setting(help="registry name of the token mixer (unifiedctx.mixers.available())",
                          check=_mixer_name)
    mixer_options: dict = _setting({}, help="keyword options of the mixer (heads, kernel_size, ...)",
                                   check=mixer_options_dict)
    mlp_ratio: float = _setting(4.0, help="hidden width of the channel MLP, as a multiple of C",
                                check=_positive_float)
    embed_kernel: int | None = _setting(None, help="kernel of the patch embedding (None: the stride)",
                                        check=_optional(check_positive_int))
    embed_norm: str | None = _setting(None, help="norm after the patch embedding (None: none)",
                                      check=_optional(lambda n, v: check_choice(n, v, NORMS)))
    embed_eps: float | None = _setting(None, help="eps of the embedding norm (None: the norm's default)",
                                       check=_optional(_positive_float))
    norm: str = _setting("layer", help="the blocks' two norms: batch, layer, group or none",
                         check=lambda n, v: check_choice(n, v, NORMS))
    norm_eps: float | None = _setting(None, help="eps of the blocks' norms (None: the norm's default)",
                                      check=_optional(_positive_float))
    pos_conv: bool = _setting(False, help="start every block with Container-Light's x + dwconv3x3(x)",
                              check=check_bool)
    layer_scale: float | None = _setting(None, help="initial per-channel residual scale (None: no scale)",
                                         check=_optional(check_float))
    where: InitVar[str] = ""

    def __post_init__(self, where: str) -> None:
        for f in dataclasses.fields(self):
            try:
                object.__setattr__(self, f.name, f.metadata["check"](f.name, getattr(self, f.name)))
            except (TypeError, ValueError) as err:
                if not where:
                    raise
                raise type(err)(f"{where}['{f.name}']: {err}") from None
        takes, shared = mixer_takes(self.mixer), shared_options()
        unknown = [k for k in self.mixer_options if k not in takes and k not in shared]
        if unknown:
            prefix = f"{where}: " if where else ""
            raise TypeError(f"{prefix}mixer {self.mixer!r} has no option {unknown[0]!r}; its options are: "
                            f"{', '.join(takes) or 'none'}")

    # ------------------------------------------------------------------ JSON
    @classmethod
    def keys(cls) -> tuple[str, ...]:
        """Every setting's name, in order."""
        return tuple(f.name for f in dataclasses.fields(cls))

    def to_dict(self) -> dict:
        """Every setting as plain JSON-able values (what ``model.config["stages"]`` holds)."""
        out = {k: copy.deepcopy(getattr(self, k)) for k in self.keys()}
        json.dumps(out)  # a spec is JSON by construction; fail here rather than in a checkpoint
        return out

    @classmethod
    def from_dict(cls, data, where: str = "stage") -> StageSpec:
        """A spec from a stage dict (missing settings take their defaults; unknown or missing
        required keys are a ``ValueError`` naming them); a StageSpec is returned as it is."""
        if isinstance(data, StageSpec):
            return data
        if not isinstance(data, dict):
            raise TypeError(f"{where} must be a dict or a StageSpec, got {type(data).__name__}")
        missing = [k for k in STAGE_REQUIRED if k not in data]
        unknown = sorted(set(data) - set(cls.keys()))
        if missing or unknown:
            raise ValueError(f"{where}: missing {missing}, unknown {unknown}; a stage takes "
                             f"{', '.join(cls.keys())}")
        return cls(**data, where=where)

    def replace(self, **changes) -> StageSpec:
        """A copy with some settings changed (checked again); an unknown name is a ``TypeError``."""
        unknown = sorted(set(changes) - set(self.keys()))
        if unknown:
            raise TypeError(f"StageSpec has no setting {unknown[0]!r}; "
                            f"its settings are: {', '.join(self.keys())}")
        return dataclasses.replace(self, **changes)


#: Settings every stage must give.
STAGE_REQUIRED: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(StageSpec)
                                        if f.default is MISSING and f.default_factory is MISSING)
#: Every optional per-stage setting and its default.
STAGE_DEFAULTS: dict = {f.name: (f.default if f.default is not MISSING else f.default_factory())
                        for f in dataclasses.fields(StageSpec) if f.name not in STAGE_REQUIRED}


def stage_specs(stages) -> list[StageSpec]:
    """``[StageSpec]`` from a non-empty list of stage dicts or specs (errors name ``stages[i]``)."""
    if not isinstance(stages, (list, tuple)) or not stages:
        raise ValueError(f"stages must be a non-empty list of stage dicts, got {stages!r}")
    return [StageSpec.from_dict(s, where=f"stages[{i}]") for i, s in enumerate(stages)]


def merge_mixer(specs: list[StageSpec], mixer: str | None = None, options: dict | None = None,
                ) -> list[StageSpec]:
    """Override the stages' mixer and mixer options, dropping nothing silently.

    * ``options`` merge into each stage's own options, on the stages whose mixer takes them
      (``kernel_size=7`` changes the dwconv and Container stages, ``proj`` and ``heads`` stay);
    * a new ``mixer`` keeps only the stage options it takes (``proj`` goes, ``heads`` stays for
      attention), plus ``options``;
    * an option in ``options`` that no stage's mixer takes is a ``TypeError`` naming it.
    """
    options = dict(options or {})
    used: set[str] = set()
    out = []
    for spec in specs:
        name = spec.mixer if mixer is None else _mixer_name("mixer", mixer)
        takes = mixer_takes(name)
        kept = spec.mixer_options if name == spec.mixer else {k: v for k, v in spec.mixer_options.items()
                                                              if k in takes}
        given = {k: v for k, v in options.items() if k in takes}
        used |= set(given)
        out.append(spec.replace(mixer=name, mixer_options={**kept, **copy.deepcopy(given)}))
    unused = [k for k in options if k not in used]
    if unused:
        names = sorted({s.mixer for s in out})
        takes = sorted({k for n in names for k in mixer_takes(n)})
        mixers = (f"mixer {names[0]!r} has" if len(names) == 1
                  else f"mixers {', '.join(map(repr, names))} have")
        raise TypeError(f"no stage can use the option {unused[0]!r}: {mixers} no option {unused[0]!r} "
                        f"(the stages' mixers take: {', '.join(takes)})")
    return out
