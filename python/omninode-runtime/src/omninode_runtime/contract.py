"""The parts of a node's ``contract.yaml`` the runtime reads, and its version check.

The models ignore keys they do not know: the generator and ONEX may add fields
(``metadata``, ``dependencies``, ...) without breaking deployed runtimes.
"""

import re
from collections.abc import Mapping, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

INTROSPECTION_TOPIC = "onex.evt.platform.node-introspection.v1"


class ContractError(ValueError):
    """``contract.yaml`` is missing, malformed or inconsistent with the node."""


class RuntimeVersionError(RuntimeError):
    """This runtime's version is outside the range the contract asks for."""

    def __init__(self, version: str, requirement: str) -> None:
        """Say which version was found and which range the contract requires."""
        super().__init__(
            f"omninode-runtime {version} does not satisfy this node's requirement "
            f"{requirement} (contract.yaml runtime.version); "
            "use an image with a matching runtime"
        )
        self.version = version
        self.requirement = requirement


class EnumNodeType(StrEnum):
    """ONEX ``EnumNodeType`` values a contract may declare."""

    EFFECT_GENERIC = "EFFECT_GENERIC"
    COMPUTE_GENERIC = "COMPUTE_GENERIC"
    REDUCER_GENERIC = "REDUCER_GENERIC"
    ORCHESTRATOR_GENERIC = "ORCHESTRATOR_GENERIC"

    @property
    def kind(self) -> "EnumNodeKind":
        """The lowercase ONEX ``EnumNodeKind`` (``effect``, ...)."""
        return EnumNodeKind(self.value.removesuffix("_GENERIC").lower())


class EnumNodeKind(StrEnum):
    """ONEX ``EnumNodeKind``: the kind names used in introspection and metrics."""

    EFFECT = "effect"
    COMPUTE = "compute"
    REDUCER = "reducer"
    ORCHESTRATOR = "orchestrator"


class _ContractPart(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class ModelSemVer(_ContractPart):
    """``{major, minor, patch}``; the string form ``"1.2.3"`` is accepted too."""

    major: int = Field(ge=0)
    minor: int = Field(default=0, ge=0)
    patch: int = Field(default=0, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, data: object) -> object:
        if isinstance(data, str):
            parts = parse_version(data)
            return dict(zip(("major", "minor", "patch"), parts, strict=False))
        return data

    def __str__(self) -> str:
        """``major.minor.patch``."""
        return f"{self.major}.{self.minor}.{self.patch}"


class ModelContractModelRef(_ContractPart):
    """Where a node's input or output model lives."""

    name: str = Field(min_length=1)
    module: str = Field(min_length=1)
    description: str = ""


class ModelHandlerRef(_ContractPart):
    """A function, named by module and attribute, that the runtime imports."""

    function: str = Field(min_length=1)
    module: str = Field(min_length=1)
    type: Literal["sync", "async"] = "async"


class ModelHandlerRoute(_ContractPart):
    """One operation and the handler that serves it."""

    operation: str = Field(min_length=1)
    handler: ModelHandlerRef
    description: str = ""


class ModelHandlerRouting(_ContractPart):
    """``handler_routing``: operation -> handler, in contract order."""

    routing_strategy: Literal["operation_match"] = "operation_match"
    entry_point: ModelHandlerRef | None = None
    handlers: list[ModelHandlerRoute] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_operations(self) -> "ModelHandlerRouting":
        seen: set[str] = set()
        for route in self.handlers:
            if route.operation in seen:
                raise ValueError(f"operation {route.operation!r} is routed twice")
            seen.add(route.operation)
        return self


class ModelEventBusTopics(_ContractPart):
    """``event_bus``: what the node consumes and produces."""

    subscribe_topics: list[str] = Field(default_factory=list)
    publish_topics: list[str] = Field(default_factory=list)


class ModelIntrospectionConfig(_ContractPart):
    """``introspection``: whether and how often the node announces itself."""

    member: bool = False
    topic: str = INTROSPECTION_TOPIC
    heartbeat_seconds: float = Field(default=30.0, gt=0)


class ModelRuntimeRequirement(_ContractPart):
    """``runtime``: the runtime package and version range the node needs."""

    package: str = "omninode-runtime"
    version: str = ""


class EnumStepErrorAction(StrEnum):
    """What a failed workflow step does to the steps that completed before it."""

    COMPENSATE = "compensate"
    STOP = "stop"


class ModelWorkflowStep(_ContractPart):
    """One step of ``workflow_coordination``: an operation on a node.

    A step with topics is *remote* (a command to a sibling node, answered on
    its reply topic); one without is *local* (this node's own handler runs).
    """

    step_name: str = Field(min_length=1)
    step_type: EnumNodeKind | None = None
    node: str = Field(min_length=1)
    operation: str = Field(min_length=1)
    command_topic: str | None = Field(default=None, min_length=1)
    reply_topic: str | None = Field(default=None, min_length=1)
    depends_on: list[str] = Field(default_factory=list)
    timeout_ms: float = Field(default=5_000.0, gt=0)
    retry_count: int = Field(default=0, ge=0)
    error_action: EnumStepErrorAction = EnumStepErrorAction.COMPENSATE
    compensation_operation: str | None = Field(default=None, min_length=1)

    @field_validator("step_type", mode="before")
    @classmethod
    def _onex_kind(cls, value: object) -> object:
        # ONEX writes kinds both ways: ``effect`` and ``EFFECT_GENERIC``.
        if isinstance(value, str):
            return value.strip().lower().removesuffix("_generic")
        return value

    @model_validator(mode="after")
    def _topics_go_together(self) -> "ModelWorkflowStep":
        if (self.command_topic is None) != (self.reply_topic is None):
            raise ValueError(
                f"step {self.step_name!r}: a remote step needs both command_topic "
                "and reply_topic (a local step has neither)"
            )
        return self

    @property
    def is_remote(self) -> bool:
        """Whether a sibling node runs the step (over the event bus)."""
        return self.command_topic is not None


class ModelWorkflowCoordination(_ContractPart):
    """``workflow_coordination``: the steps of a system workflow, as a DAG."""

    execution_mode: Literal["parallel", "sequential"] = "parallel"
    timeout_ms: float | None = Field(default=None, gt=0)
    steps: list[ModelWorkflowStep] = Field(default_factory=list)

    @model_validator(mode="after")
    def _a_dag_of_known_steps(self) -> "ModelWorkflowCoordination":
        names = [step.step_name for step in self.steps]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"workflow step names are not unique: {duplicates}")
        for step in self.steps:
            unknown = [dep for dep in step.depends_on if dep not in names]
            if unknown:
                raise ValueError(
                    f"step {step.step_name!r} depends on unknown steps {unknown}"
                )
        cycle = find_cycle({step.step_name: step.depends_on for step in self.steps})
        if cycle:
            raise ValueError(f"workflow steps form a cycle: {' -> '.join(cycle)}")
        return self

    @property
    def remote_steps(self) -> tuple[ModelWorkflowStep, ...]:
        """The steps sibling nodes run."""
        return tuple(step for step in self.steps if step.is_remote)

    def topics(self, kind: Literal["command_topic", "reply_topic"]) -> list[str]:
        """The distinct command or reply topics of the remote steps, in order."""
        found = (getattr(step, kind) for step in self.remote_steps)
        return list(dict.fromkeys(topic for topic in found if topic))


def find_cycle(graph: Mapping[str, Sequence[str]]) -> list[str]:
    """A cycle of ``graph`` (node -> the nodes it needs) as a path, or ``[]``."""
    done: set[str] = set()
    path: list[str] = []

    def visit(name: str) -> list[str]:
        if name in path:
            return [*path[path.index(name) :], name]
        if name in done:
            return []
        path.append(name)
        for needed in graph.get(name, ()):
            cycle = visit(needed)
            if cycle:
                return cycle
        path.pop()
        done.add(name)
        return []

    for name in graph:
        cycle = visit(name)
        if cycle:
            return cycle
    return []


class ModelAggregateSource(_ContractPart):
    """A node whose results a reducer folds, and the topic they arrive on."""

    node: str = Field(min_length=1)
    topic: str = Field(min_length=1)


class ModelSharedModelRef(_ContractPart):
    """A type the node shares with its system, from the system's shared package."""

    name: str = Field(min_length=1)
    module: str = Field(min_length=1)
    distribution: str = ""


class ModelContract(_ContractPart):
    """A parsed ``contract.yaml`` (the subset the runtime acts on)."""

    name: str = Field(min_length=1)
    contract_version: ModelSemVer
    node_version: ModelSemVer
    node_type: EnumNodeType
    description: str = ""
    input_model: ModelContractModelRef
    output_model: ModelContractModelRef
    handler_routing: ModelHandlerRouting
    event_bus: ModelEventBusTopics = Field(default_factory=ModelEventBusTopics)
    terminal_event: str | None = None
    introspection: ModelIntrospectionConfig = Field(
        default_factory=ModelIntrospectionConfig
    )
    mixins: list[str] = Field(default_factory=list)
    performance: dict[str, float] = Field(default_factory=dict)
    runtime: ModelRuntimeRequirement = Field(default_factory=ModelRuntimeRequirement)
    workflow_coordination: ModelWorkflowCoordination | None = None
    aggregates: list[ModelAggregateSource] = Field(default_factory=list)
    shared_models: list[ModelSharedModelRef] = Field(default_factory=list)

    @model_validator(mode="after")
    def _local_steps_are_routed(self) -> "ModelContract":
        coordination = self.workflow_coordination
        routed = self.operations
        for step in coordination.steps if coordination else []:
            wanted = [step.operation, step.compensation_operation]
            missing = [op for op in wanted if op is not None and op not in routed]
            if not step.is_remote and missing:
                raise ValueError(
                    f"local step {step.step_name!r} runs {missing[0]!r}, which "
                    f"handler_routing does not route (routed: {list(routed)})"
                )
        return self

    @property
    def kind(self) -> EnumNodeKind:
        """``effect``, ``compute``, ``reducer`` or ``orchestrator``."""
        return self.node_type.kind

    @property
    def operations(self) -> tuple[str, ...]:
        """The routed operations, in contract order (an orchestrator's workflow)."""
        return tuple(route.operation for route in self.handler_routing.handlers)


def load_contract(path: Path | str) -> ModelContract:
    """Read and validate ``contract.yaml``; ContractError says what is wrong."""
    path = Path(path)
    try:
        data: object = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ContractError(f"cannot read {path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ContractError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ContractError(f"{path} must hold a YAML mapping")
    try:
        return ModelContract.model_validate(data)
    except ValidationError as exc:
        raise ContractError(f"{path} is not a valid contract: {exc}") from exc


_CLAUSE = re.compile(r"(>=|<=|==|!=|>|<)\s*(\S+)")


def parse_version(text: str) -> tuple[int, ...]:
    """``"0.1.0"`` -> ``(0, 1, 0)``; ValueError for anything but dotted integers."""
    parts = text.strip().split(".")
    if not all(part.isdigit() for part in parts):
        raise ValueError(f"not a dotted-integer version: {text!r}")
    return tuple(int(part) for part in parts)


def version_satisfies(version: str, requirement: str) -> bool:
    """Whether ``version`` meets every comma-separated clause of ``requirement``.

    Clauses are ``>=``, ``>``, ``<=``, ``<``, ``==`` or ``!=`` followed by a
    dotted-integer version; missing components count as 0 (``1.0 == 1.0.0``).
    An empty requirement accepts every version.
    """
    have = parse_version(version)
    for raw in requirement.split(","):
        clause = raw.strip()
        if not clause:
            continue
        match = _CLAUSE.fullmatch(clause)
        if match is None:
            raise ValueError(f"unsupported version clause: {clause!r}")
        operator, wanted = match.group(1), parse_version(match.group(2))
        width = max(len(have), len(wanted))
        left = have + (0,) * (width - len(have))
        right = wanted + (0,) * (width - len(wanted))
        ok = {
            ">=": left >= right,
            ">": left > right,
            "<=": left <= right,
            "<": left < right,
            "==": left == right,
            "!=": left != right,
        }[operator]
        if not ok:
            return False
    return True


def check_runtime_version(contract: ModelContract, version: str) -> None:
    """Raise RuntimeVersionError unless ``version`` is in ``runtime.version``."""
    requirement = contract.runtime.version
    try:
        ok = version_satisfies(version, requirement)
    except ValueError as exc:
        raise ContractError(f"runtime.version {requirement!r}: {exc}") from exc
    if not ok:
        raise RuntimeVersionError(version, requirement)
