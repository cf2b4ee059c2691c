"""Search space: a validated YAML space + the model's layers -> Optuna distributions -> CompressionPlan.

Every choice list of a knob (one per knob of the registered methods, :mod:`autocompress.compress.registry`)
becomes an Optuna categorical parameter, named ``<layer>:<knob>`` for per-layer groups and ``<group>:<knob>`` when
a group shares one value; single-valued choices are fixed and not sampled. The output layer's ``channel_keep`` is
fixed at 1 (its channels are the model's outputs). A sampled combination means what the methods say it means
(:func:`~autocompress.compress.registry.normalize`: e.g. ``weight_sharing`` and ``entropy_coding`` take effect
only with quantized weights).
"""

from __future__ import annotations

from dataclasses import dataclass

import optuna

from .compress import registry
from .compress.layers import LayerInfo
from .config import LayerGroup, SearchSpaceConfig
from .errors import ConfigError
from .plan import CompressionPlan, DistillPlan, LayerPlan, StudentPlan


@dataclass(frozen=True)
class Assignment:
    layer: LayerInfo
    group: LayerGroup


@dataclass(frozen=True)
class Section:
    """What one set of sampled parameters ``<name>:<knob>`` decides: one layer of a per-layer group, or every
    layer of a group sharing its values. ``choices``: knob -> its choices here (one element: fixed)."""

    name: str
    layers: tuple[LayerInfo, ...]
    choices: dict[str, list]


class SearchSpace:
    """Binds a :class:`SearchSpaceConfig` to the layers of one teacher."""

    def __init__(self, config: SearchSpaceConfig, layers: list[LayerInfo], *, source: str = "search space") -> None:
        self.config = config
        self.layers = layers
        self.assignments: list[Assignment] = []
        self.unassigned: list[str] = []
        self.allowed: dict[str, list] = {}  # parameter -> the choices left to it (see restrict)
        for info in layers:
            group = next((g for g in config.groups if g.selects(info.name, info.type_name)), None)
            if group is None:
                self.unassigned.append(info.name)
            else:
                self.assignments.append(Assignment(info, group))
        if not self.assignments:
            names = [f"{i.name} ({i.type_name})" for i in layers] or ["(none: the model has no Conv/Linear layer)"]
            raise ConfigError("no group selects any layer of the model, so there is nothing to compress; "
                              f"the model's compressible layers are: {', '.join(names)}", file=source,
                              field="groups")

    def distributions(self) -> dict[str, optuna.distributions.CategoricalChoiceType]:
        """Every sampled parameter and its choices (for docs, dashboards and tests)."""
        out: dict[str, list] = {}
        for a in self.assignments:
            for knob in registry.KNOBS:
                choices = self._choices(a, knob)
                if len(choices) > 1:
                    out[self._param(a, knob)] = choices
        for section, spec in (("student", self.config.student), ("distill", self.config.distill)):
            for knob, choices in spec.model_dump().items():
                if len(choices) > 1:
                    out[f"{section}:{knob}"] = list(choices)
        return out

    @staticmethod
    def _param(a: Assignment, knob: str) -> str:
        return f"{a.layer.name}:{knob}" if a.group.per_layer else f"{a.group.name}:{knob}"

    def _choices(self, a: Assignment, knob: str) -> list:
        if knob == "channel_keep" and a.layer.is_output:
            return [1.0]
        return list(self.allowed.get(self._param(a, knob), getattr(a.group, knob)))

    def sections(self) -> list[Section]:
        """The space's sections in layer order (a shared group's at its first layer)."""
        out: dict[str, tuple[list[LayerInfo], dict[str, list]]] = {}
        for a in self.assignments:
            name = a.layer.name if a.group.per_layer else a.group.name
            # a shared group's section has the group's choices (its output layer keeps its channels regardless)
            choices = {k: self._choices(a, k) if a.group.per_layer else
                       list(self.allowed.get(self._param(a, k), getattr(a.group, k))) for k in registry.KNOBS}
            out.setdefault(name, ([], choices))[0].append(a.layer)
        return [Section(name, tuple(layers), choices) for name, (layers, choices) in out.items()]

    def restrict(self, allowed: dict[str, list]) -> None:
        """Leave parameter ``name`` only the choices ``allowed[name]`` (each a subset of its choices, none empty):
        how a study narrows its space from evidence (:mod:`autocompress.search.warmstart`). Every worker of a study
        restricts alike (the study stores what it left)."""
        for name, choices in allowed.items():
            section, _, knob = name.rpartition(":")
            full = next((list(getattr(a.group, knob)) for a in self.assignments if self._param(a, knob) == name),
                        None)
            if full is None or not choices or any(c not in full for c in choices):
                raise ValueError(f"cannot restrict {name!r} to {choices}: its choices are {full}")
        self.allowed = {k: list(v) for k, v in allowed.items()}

    def uniform_params(self, *, weight_bits: int, sparsity: float, activation_bits: int | None = None,
                       smallest_student: bool = False) -> dict[str, object]:
        """Optuna parameters of a uniform plan: every layer at (the choice closest to) ``weight_bits`` and
        ``sparsity`` (and ``activation_bits`` when given), everything else left as in the teacher (largest
        keep/rank/width/depth, float inputs); ``smallest_student``: the smallest student width and depth instead.

        Used to warm-start a study with the plans an expert would try first.
        """
        def closest(choices: list, target):
            if isinstance(target, bool) or not isinstance(target, int | float):
                return target if target in choices else choices[0]
            return min(choices, key=lambda c: (abs(c - target), c))

        targets = {k.name: k.default if k.uniform is None else k.uniform for k in registry.KNOBS.values()}
        targets |= {"weight_bits": weight_bits, "sparsity": sparsity}
        if activation_bits is not None:
            targets["activation_bits"] = activation_bits
        params: dict[str, object] = {}
        for name, choices in self.distributions().items():
            section, _, knob = name.rpartition(":")
            if section in ("student", "distill"):
                params[name] = ((min if smallest_student else max)(choices) if section == "student"
                                else choices[0])
            else:
                params[name] = closest(choices, targets[knob])
        return params

    def suggest(self, trial: optuna.Trial) -> CompressionPlan:
        """Sample a plan through ``trial`` (works with any Optuna sampler)."""
        def pick(name: str, choices: list):
            return choices[0] if len(choices) == 1 else trial.suggest_categorical(name, choices)

        layers = {}
        for a in self.assignments:
            values = {knob: pick(self._param(a, knob), self._choices(a, knob)) for knob in registry.KNOBS}
            lp = LayerPlan(**registry.normalize(values))
            if not lp.is_identity:
                layers[a.layer.name] = lp
        student = StudentPlan(**{k: pick(f"student:{k}", v) for k, v in self.config.student.model_dump().items()},
                              channel_multiple=self.config.channel_multiple)
        distill = DistillPlan(**{k: pick(f"distill:{k}", v) for k, v in self.config.distill.model_dump().items()})
        return CompressionPlan(layers=layers, student=student, distill=distill)
