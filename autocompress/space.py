"""Search space: a validated YAML space + the model's layers -> Optuna distributions -> CompressionPlan.

Every choice list of a knob (one per knob of the registered methods, :mod:`autocompress.compress.registry`)
becomes an Optuna categorical parameter, named ``<layer>:<knob>`` for per-layer groups and ``<group>:<knob>`` when
a group shares one value (or ``<tie>:<knob>`` for layers a study tied, :meth:`SearchSpace.tie`); single-valued
choices are fixed and not sampled. The output layer's ``channel_keep`` is
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
        self.tied: dict[str, str] = {}  # layer -> the tied section whose parameters it shares (see tie)
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

    def section_name(self, a: Assignment) -> str:
        """The section deciding ``a``'s layer: the layer, its group when the group shares its values, or its tie."""
        return self.tied.get(a.layer.name, a.layer.name) if a.group.per_layer else a.group.name

    def _param(self, a: Assignment, knob: str) -> str:
        return f"{self.section_name(a)}:{knob}"

    def _choices(self, a: Assignment, knob: str) -> list:
        if knob == "channel_keep" and a.layer.is_output:
            return [1.0]
        return list(self.allowed.get(self._param(a, knob), getattr(a.group, knob)))

    def sections(self) -> list[Section]:
        """The space's sections in layer order (a shared group's at its first layer)."""
        out: dict[str, tuple[list[LayerInfo], dict[str, list]]] = {}
        for a in self.assignments:
            name = self.section_name(a)
            # a shared group's section has the group's choices (its output layer keeps its channels regardless)
            choices = {k: self._choices(a, k) if a.group.per_layer else
                       list(self.allowed.get(self._param(a, k), getattr(a.group, k))) for k in registry.KNOBS}
            out.setdefault(name, ([], choices))[0].append(a.layer)
        return [Section(name, tuple(layers), choices) for name, (layers, choices) in out.items()]

    def tie(self, ties: dict[str, list[str]]) -> None:
        """Let the layers ``ties[name]`` (of one per-layer group, none its output layer) share the parameters
        ``<name>:<knob>``, as a shared group's layers do: how a study cuts a deep network's parameters from its
        evidence (:func:`autocompress.search.warmstart.ties`). Replaces earlier ties; call before
        :meth:`restrict`. Every worker of a study ties alike (the study stores its ties)."""
        by_layer = {a.layer.name: a for a in self.assignments}
        taken = set(by_layer) | {a.group.name for a in self.assignments} | {"student", "distill"}
        tied: dict[str, str] = {}
        for name, members in ties.items():
            found = [by_layer.get(m) for m in members]
            if name in taken or not members or len(set(members)) < len(members) or any(a is None or not a.group.per_layer or a.layer.is_output
                                                   or a.group is not found[0].group or m in tied
                                                   for m, a in zip(members, found, strict=True)):
                raise ValueError(f"cannot tie {members} as {name!r}: ties take layers of one per-layer group, "
                                 "each once and none the output layer, under a name no layer or group has")
            tied |= dict.fromkeys(members, name)
        self.tied = tied
        self.allowed = {}

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
