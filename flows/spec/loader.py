"""Load and validate a job spec: every problem, located, before anything is spent.

    problems = validate_spec_file("specs/demo.yaml")   # [] when valid
    spec = load_spec("specs/demo.yaml")                # JobSpec, or raises SpecInvalid

A problem names file, line and column, the JSON path and what is wrong, e.g.

    specs/x.yaml:7:31: matrix.aspect_ratio[2]: wiro does not accept aspect ratio '7:3'; ...

Checks, in order: the file's size, YAML syntax (the parser stops at the first syntax error,
so that one is all a broken file can report) and size (values, aliases expanded, and
nesting), duplicate keys, the JSON Schema (`schemas/job.schema.json`, unknown keys
included), providers (unknown names, each provider's option schema; `matrix.model` per
provider names providers of the provider axis), the output target's fsspec protocol, named
prompts (each text once), template placeholders, where the dataset comes from (an http one
under the host rule of every fetch, `flows.spec.inputs.fetch_target`) and its size, the number of
cells (bounded before anything expands), then a full expansion into cells (missing or
refused reference files, rows without the references `references_required` asks for,
colliding output paths, paths that are nbp's own files, identical requests) and every
documented limit of every provider of the fallback list (`providers.limits.limit_problems`)
and every model id against what the provider that would be asked for it offers. What is
allowed but likely unmeant (an include entry that overwrites what an earlier one set,
dataset rows left out) is a note (`Job.notes`), not a problem.
Each distinct problem is reported once, at the most precise place: the list item, the
prompt, the dataset path.

Every limit on what a spec may hold or read is a field of `InputPolicy` (documented
defaults; `policy=` on every entry point, `InputPolicy.from_environ()` when it is None).
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from functools import cache
from typing import Any

import jsonschema  # type: ignore[import-untyped, unused-ignore]  # no stubs installed

from nbp.flows.spec import cells as cellmod
from nbp.flows.spec import yamlpos
from nbp.flows.spec.channels import account_from_entry
from nbp.flows.spec.credentials import (
    block_name,
    extends,
    foreign_block_variable,
    foreign_value,
    foreign_variable,
    owner,
    provider_variables,
    unknown_key,
    wrong_block_name,
)
from nbp.flows.spec.dataset import DUPLICATE_RULES, Dataset, DatasetError, read_dataset
from nbp.flows.spec.inputs import (
    InputPolicy,
    InputRefused,
    check_location,
    fetch_allowed,
    is_http,
    protocol_problem,
    split_protocol,
)
from nbp.flows.spec.model import (
    DEFAULT_MODEL,
    DEFAULT_OUTPUT_PATH,
    DEFAULT_RETRIES,
    Account,
    CellSource,
    DatasetSpec,
    GallerySpec,
    InputFile,
    Job,
    JobSpec,
    MatrixSpec,
    OutputSpec,
    ProviderLimits,
    SkippedRows,
)
from nbp.flows.spec.policies import DEADLINE_ROUTINGS, DEFAULT_ROUTING, ROUTINGS
from nbp.flows.spec.rate import Rate, SpendLimit, parse_duration
from nbp.flows.spec.settings import provider_rules
from nbp.flows.spec.templating import Template, TemplateError
from nbp.flows.spec.yamlpos import JsonPath, LocatedDocument
from nbp.providers import registry
from nbp.providers.base import (
    Capabilities,
    ImageRequest,
    ProviderFacts,
    Reference,
    may_receive_credentials,
    url_origin,
)
from nbp.providers.limits import limit_problems
from nbp.providers.options import option_problems
from nbp.schemas import load_job_schema
from nbp.schemas.messages import Wording, schema_problems

DEFAULT_TARGET = "./runs/{name}"
DEFAULT_ASPECT_RATIOS = ("1:1",)
DEFAULT_RESOLUTIONS = ("1K",)
PROVIDER_SECTIONS = ("limits", "options", "prices", "base_urls", "accounts")
# What `output.gallery` may name besides matrix axes, include keys and dataset columns: the
# manifest's own columns (outputs.gallery.AXIS_COLUMNS; `run` is run_id).
GALLERY_AXES = ("aspect_ratio", "resolution", "replicate", "run", "provider", "model", "account",
                "prompt", "status")
MAX_PROBLEMS = 200  # then validation stops: 90,000 wrong values take seconds to describe
# Parts of the spec a cell is built from: with a schema error in one of them, the spec is
# not expanded (the problems it would add would only repeat that error).
EXPANSION_INPUTS = {
    (key,) for key in ("matrix", "dataset", "references", "repeat", "seed", "output")
}


@dataclass(frozen=True)
class Problem:
    """One located problem of a spec; `str()` is `file:line:col: path: message`."""

    file: str
    line: int
    column: int
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}: {self.path}: {self.message}"


class _TooManyProblems(Exception):
    """`MAX_PROBLEMS` are found: a spec that bad is not worth checking further."""


class SpecInvalid(Exception):
    """The spec has problems; `.problems` lists every one."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


def load_job(
    path: str, *, policy: InputPolicy | None = None, keep_cells: bool = False
) -> Job:
    """The validated spec at `path` with its cells; raises `SpecInvalid` with every problem.
    `policy` bounds what the spec may hold and read (default `InputPolicy.from_environ()`).
    The cells expand again on each pass, unless `keep_cells` (hold the ones validation
    built: for a caller that reads them once, right away)."""
    job, problems = check_job_file(path, policy=policy, keep_cells=keep_cells)
    if problems or job is None:
        raise SpecInvalid(problems)
    return job


def load_spec(path: str, *, policy: InputPolicy | None = None) -> JobSpec:
    """The validated spec at `path`; raises `SpecInvalid` with every problem."""
    return load_job(path, policy=policy).spec


def validate_spec_file(path: str, *, policy: InputPolicy | None = None) -> list[Problem]:
    """Every problem of the spec at `path`, in file order; empty when it is valid."""
    return check_job_file(path, policy=policy)[1]


def parse_job(
    text: str, *, source: str = "<memory>", base_dir: str | None = None,
    policy: InputPolicy | None = None,
) -> Job:
    """`load_job` for YAML text; relative paths resolve against `base_dir` (default: cwd)."""
    job, problems = check_job(text, source=source, base_dir=base_dir, policy=policy)
    if problems or job is None:
        raise SpecInvalid(problems)
    return job


def parse_spec(
    text: str, *, source: str = "<memory>", base_dir: str | None = None,
    policy: InputPolicy | None = None,
) -> JobSpec:
    """`load_spec` for YAML text; relative paths resolve against `base_dir` (default: cwd)."""
    return parse_job(text, source=source, base_dir=base_dir, policy=policy).spec


def check_job_file(
    path: str, *, policy: InputPolicy | None = None, keep_cells: bool = False
) -> tuple[Job | None, list[Problem]]:
    """`check_job` for the file at `path` (read only up to `policy.max_spec_bytes`)."""
    limit = (policy or InputPolicy()).max_spec_bytes
    try:
        with open(path, "rb") as handle:
            data = handle.read(limit + 1)
        text = data.decode("utf-8") if len(data) <= limit else ""
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return None, [Problem(path, 1, 1, "$", f"cannot read the spec: {reason}")]
    if len(data) > limit:
        return None, [_too_large(path, limit)]
    return check_job(text, source=path, base_dir=os.path.dirname(os.path.abspath(path)),
                     policy=policy, keep_cells=keep_cells)


def check_spec_file(
    path: str, *, policy: InputPolicy | None = None
) -> tuple[JobSpec | None, list[Problem]]:
    job, problems = check_job_file(path, policy=policy)
    return (job.spec if job else None), problems


def check_job(
    text: str, *, source: str = "<memory>", base_dir: str | None = None,
    policy: InputPolicy | None = None, keep_cells: bool = False,
) -> tuple[Job | None, list[Problem]]:
    """The job (None when it cannot be built) and every problem found. Validation expands
    every cell to check it; the job's cells expand again on each pass (with what validation
    prepared: templates, combinations, reference identities), never all held at once,
    unless `keep_cells`."""
    if policy is None:
        try:
            policy = InputPolicy.from_environ()
        except ValueError as exc:
            return None, [Problem(source, 1, 1, "$", f"{exc} (in the environment)")]
    if len(text) > policy.max_spec_bytes or len(text.encode()) > policy.max_spec_bytes:
        return None, [_too_large(source, policy.max_spec_bytes)]
    checker = _Checker(text, source, os.path.abspath(base_dir or os.getcwd()), policy)
    checker.keep_cells = keep_cells
    try:
        spec = checker.run()
    except _TooManyProblems:
        return None, [*checker.sorted_problems(), Problem(
            source, 1, 1, "$", f"more than {MAX_PROBLEMS} problems: nbp stopped looking; "
                               "fix these and validate again")]
    job = (Job(spec, checker.cells, skipped=checker.skipped, notes=tuple(checker.notes),
               inputs=checker.inputs)
           if spec is not None and not checker.problems else None)
    return job, checker.sorted_problems()


def check_spec(
    text: str, *, source: str = "<memory>", base_dir: str | None = None,
    policy: InputPolicy | None = None,
) -> tuple[JobSpec | None, list[Problem]]:
    """The spec (None when it cannot be built) and every problem found."""
    job, problems = check_job(text, source=source, base_dir=base_dir, policy=policy)
    return (job.spec if job else None), problems


def _too_large(source: str, limit: int) -> Problem:
    return Problem(source, 1, 1, "$", f"the spec is larger than {limit:,} bytes, the most nbp "
                                      "reads (InputPolicy.max_spec_bytes); put bulk data in a "
                                      "dataset file")


@cache
def _job_validator() -> Any:
    return jsonschema.Draft202012Validator(load_job_schema())


def _validator_for(schema: Mapping[str, Any]) -> Any:
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    return cls(schema)


def text_value(value: Any) -> str:
    """A YAML scalar as template text: true/false, numbers as written, null as ""."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


class _Checker:
    def __init__(self, text: str, source: str, base_dir: str, policy: InputPolicy) -> None:
        self.text = text
        self.source = source
        self.base_dir = base_dir
        self.policy = policy
        self.dataset_refused = False  # not read: outside the allowed places
        self.too_many_cells = False   # not read: the matrix alone is over the limit
        self.doc = LocatedDocument(None)
        self.problems: list[Problem] = []
        self._seen: set[tuple[int, int, str, str]] = set()
        self.schema_paths: list[JsonPath] = []  # where a value is wrong (not unknown keys)
        self.blocking: list[JsonPath] = []      # ... and the value cannot be expanded
        self.cells: CellSource = []             # every cell, once the spec expands
        self.inputs: tuple[InputFile, ...] = ()  # the files they were made from
        self.skipped: SkippedRows | None = None  # left out by references_required: skip
        self.notes: list[str] = []              # remarks that do not make it invalid
        self.keep_cells = False                 # hold them (see `load_job`)
        self.caps: dict[str, Capabilities] = {}
        self.known: list[str] = []
        self.listed: list[str] = []  # `provider:`, in order
        self.blocked = False  # expansion would only repeat problems already found
        self._value_paths: dict[str, dict[str, JsonPath]] = {}  # key -> value -> path
        self.accounts: dict[str, tuple[Account, ...]] = {}
        self.deadline_s: float | None = None
        # Where base URLs may point depends on what the environment names (the adapters read
        # the same variables when they run).
        self.environ: Mapping[str, str] = os.environ

    # -- reporting ------------------------------------------------------------------------

    def add(self, path: JsonPath, message: str, *, key: bool = False) -> None:
        position = self.doc.position(path, key=key)
        shown = yamlpos.format_path(path)
        mark = (position.line, position.column, shown, message)
        if mark not in self._seen:
            if len(self.problems) >= MAX_PROBLEMS:
                raise _TooManyProblems
            self._seen.add(mark)
            self.problems.append(Problem(self.source, position.line, position.column, shown,
                                         message))

    def sorted_problems(self) -> list[Problem]:
        return sorted(self.problems, key=lambda p: (p.line, p.column))

    def broken(self, path: JsonPath) -> bool:
        """A schema error at `path`, inside it, or at one of its parents' own values."""
        n = len(path)
        return any(p[:n] == path or path[: len(p)] == p for p in self.schema_paths)

    # -- the checks -----------------------------------------------------------------------

    def run(self) -> JobSpec | None:
        try:
            self.doc = yamlpos.load(self.text, max_values=self.policy.max_yaml_values,
                                    max_depth=self.policy.max_yaml_depth)
        except yamlpos.YamlSyntaxError as exc:
            pos = exc.position
            self.problems.append(Problem(self.source, pos.line, pos.column,
                                         yamlpos.format_path(exc.path), exc.message))
            return None
        for dup in self.doc.duplicates:
            self.problems.append(Problem(
                self.source, dup.position.line, dup.position.column,
                yamlpos.format_path(dup.path),
                f"duplicate key {dup.path[-1]!r} (first written at line {dup.first.line}); "
                "write each key once",
            ))
        data = self.doc.value
        if not isinstance(data, dict):
            self.add((), "a job spec is a mapping with the keys version, name, provider and "
                         "matrix (see schemas/job.schema.json)")
            return None
        self.check_schema(data)
        providers = self.check_providers(data)
        self.check_options(data)
        self.check_base_urls(data)
        self.check_limits(data)
        self.accounts = self.check_accounts(data, providers)
        self.deadline_s = self.check_routing(data)
        self.check_credentials(data, providers)
        self.check_references_required(data)
        matrix = self.matrix_spec(data)
        self.check_cell_count(data, matrix)
        dataset_spec = self.dataset_spec(data)
        dataset = self.read(dataset_spec)
        output = self.output_spec(data)
        if dataset is not None:
            self.check_columns(dataset, matrix)
        self.check_gallery(data, matrix, dataset_spec, dataset)
        self.blocked = self.blocked or any(p[:1] in EXPANSION_INPUTS for p in self.blocking)
        spec = self.job_spec(data, providers, matrix, dataset_spec, output)
        if spec is None or (dataset_spec is not None and dataset is None):
            self.check_template_syntax(data)  # names cannot be judged without the rest
            return None
        expansion = cellmod.Expansion(spec, dataset=dataset, value_path=self.value_path)
        cells = self.cells = expansion.run(keep=self.keep_cells)
        self.inputs = cells.input_files()
        self.skipped = expansion.skipped
        for issue in expansion.issues:
            self.add(issue.path, issue.message, key=issue.key)
        for issue in expansion.notes:
            self.note(issue.path, issue.message)
        self.check_provider_limits(spec, expansion.stats)
        return spec

    def check_schema(self, data: Mapping[str, Any]) -> None:
        for error in _job_validator().iter_errors(data):
            for problem in schema_problems(error, wording=_JOB_WORDING):
                path = problem.path
                self.add(path, problem.message, key=problem.at_key)
                if error.validator == "additionalProperties":
                    continue  # an unknown key changes no value: the rest can still expand
                self.schema_paths.append(path)
                if error.validator != "enum":  # a wrong ratio still expands, unchecked
                    self.blocking.append(path)

    def check_providers(self, data: Mapping[str, Any]) -> list[str]:
        """The spec's fallback list (`self.listed`) and every provider of the job, the ones
        only a `provider` matrix value names last; loads each known provider's
        capabilities."""
        self.known = registry.available()
        raw = data.get("provider")
        items: list[tuple[JsonPath, Any]]
        if isinstance(raw, list):
            items = [(("provider", i), name) for i, name in enumerate(raw)]
        else:
            items = [] if raw is None else [(("provider",), raw)]
        self.listed = [name for _, name in items if isinstance(name, str)]
        items += self.matrix_providers(data)
        matrix = _mapping(data.get("matrix"))
        per_provider = _mapping(matrix.get("model"))  # `model` written per provider
        names = list(dict.fromkeys(name for _, name in items if isinstance(name, str)))
        if "provider" not in matrix:  # then the mapping's providers are the axis
            names += [name for name in per_provider if name not in names]
        for path, name in items:
            if isinstance(name, str):
                self.load_provider(path, name)
        for name in per_provider:
            self.load_provider(("matrix", "model", name), name, key=True)
        if raw is None and not matrix.get("provider") and not per_provider:
            self.add((), "missing required key 'provider': name the provider (`provider: "
                         "kie`, or a fallback list), or add a `provider` matrix axis that pins "
                         "each cell to one")
        for section in PROVIDER_SECTIONS:
            table = data.get(section)
            if isinstance(table, dict):
                for name in table:
                    if name not in self.known:
                        self.add((section, name), self.unknown_provider(name), key=True)
                    else:
                        self.load_provider((section, name), name, key=True)
        return names

    def matrix_providers(self, data: Mapping[str, Any]) -> list[tuple[JsonPath, Any]]:
        """Where the matrix names a provider: the `provider` axis, then include entries."""
        matrix = _mapping(data.get("matrix"))
        axis = matrix.get("provider")
        found: list[tuple[JsonPath, Any]] = [
            (("matrix", "provider", i), name)
            for i, name in enumerate(axis if isinstance(axis, list) else [])
        ]
        for j, entry in enumerate(matrix.get("include") or []):
            if isinstance(entry, dict) and "provider" in entry:
                found.append((("matrix", "include", j, "provider"), entry["provider"]))
        return found

    def check_base_urls(self, data: Mapping[str, Any]) -> None:
        """A spec may point a provider only where its credentials may go
        (`providers.base.may_receive_credentials`, the rule the adapters follow too): the
        run would send the environment's real key there. Other URLs are the user's to
        choose, in the environment."""
        for name, url in _mapping(data.get("base_urls")).items():
            if name not in self.caps or not isinstance(url, str) \
                    or self.broken(("base_urls", name)):
                continue
            facts = registry.facts(name)
            if not may_receive_credentials(facts, url, self.environ):
                self.add(("base_urls", name), _refused_base_url(facts, url))

    def load_provider(self, path: JsonPath, name: str, *, key: bool = False) -> None:
        if name in self.caps:
            return
        if name not in self.known:
            self.add(path, self.unknown_provider(name), key=key)
            return
        try:
            self.caps[name] = registry.capabilities(name)
        except Exception as exc:  # any adapter, incl. third-party entry points
            self.add(path, f"provider {name!r} cannot be loaded ({type(exc).__name__}: {exc}); "
                           "its limits cannot be checked", key=key)

    def unknown_provider(self, name: str) -> str:
        close = difflib.get_close_matches(name, self.known, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        return f"unknown provider {name!r}; {hint}known: {', '.join(self.known)}"

    def check_options(self, data: Mapping[str, Any]) -> None:
        options = data.get("options")
        if not isinstance(options, dict):
            return
        for name, value in options.items():
            caps = self.caps.get(name)
            if caps is None or not isinstance(value, dict) or not caps.option_schema:
                continue
            for problem in option_problems(caps.option_schema, value):
                self.add(("options", name, *problem.path), f"{problem.message} ({name} options)",
                         key=problem.at_key)

    def check_limits(self, data: Mapping[str, Any]) -> None:
        limits = data.get("limits")
        if not isinstance(limits, dict):
            return
        for name, value in limits.items():
            rate = value.get("rate") if isinstance(value, dict) else None
            if isinstance(rate, str) and not self.broken(("limits", name, "rate")):
                try:
                    Rate.parse(rate)
                except ValueError as exc:
                    self.add(("limits", name, "rate"), str(exc))

    def check_credentials(self, data: Mapping[str, Any], providers: list[str]) -> None:
        """`credentials`: each variable one that an account of the job reads (so one of its
        providers' own, `flows.spec.credentials`), each block named after its variable."""
        credentials = data.get("credentials")
        if not isinstance(credentials, dict) or not providers or self.broken(("credentials",)):
            return
        if any(name not in self.caps for name in providers):
            return  # an unknown provider is reported already; its variables are unknown
        read = {name: provider_variables(self.caps[name]) for name in providers}
        used: dict[str, None] = {}
        for name in providers:
            used.update(dict.fromkeys(read[name]))
            for account in self.accounts.get(name, ()):
                used.update(dict.fromkeys(account.variables.values()))
        for var, block in credentials.items():
            owners = [name for name in providers if owner(read[name], var)]
            if not owners:
                self.add(("credentials", var), foreign_block_variable(read, var), key=True)
                continue
            if var not in used:
                self.add(("credentials", var),
                         f"no account of this job reads {var}; name it in "
                         f"accounts.{owners[0]} or remove it here", key=True)
            if isinstance(block, str) and block != block_name(var):
                self.add(("credentials", var), wrong_block_name(var, block))

    def check_accounts(
        self, data: Mapping[str, Any], providers: list[str]
    ) -> dict[str, tuple[Account, ...]]:
        """`accounts`: only providers of the job, only their own variables
        (`flows.spec.credentials`), no account twice."""
        found: dict[str, tuple[Account, ...]] = {}
        for name, entries in _mapping(data.get("accounts")).items():
            if self.broken(("accounts", name)) or not isinstance(entries, list):
                continue
            if name not in providers:
                self.add(("accounts", name), f"{name} is not a provider of this job "
                         f"(provider: {', '.join(providers)}); add it there or remove this "
                         "entry", key=True)
                continue
            caps = self.caps.get(name)
            if caps is None:
                continue  # an unloadable provider is reported already
            accounts: list[Account] = []
            for i, entry in enumerate(entries):
                if not self.own_account(name, provider_variables(caps), i, entry):
                    continue
                account = account_from_entry(entry, caps)
                if any(a.label == account.label for a in accounts):
                    self.add(("accounts", name, i),
                             f"the account {account.label} of {name} is listed twice")
                    continue
                accounts.append(account)
            found[name] = tuple(accounts)
        return found

    def own_account(self, name: str, documented: tuple[str, ...], i: int, entry: Any) -> bool:
        """Whether the `i`th account of provider `name` names only its own variables: a
        name that is or extends one of them; a mapping from its documented variables each
        to that variable or one extending it. Reports each that does not."""
        path: JsonPath = ("accounts", name, i)
        if isinstance(entry, str):
            if owner(documented, entry) is None:
                self.add(path, foreign_variable(name, documented, entry))
                return False
            return True
        good = True
        for key, value in entry.items():
            if key not in documented:
                self.add((*path, key), unknown_key(name, documented, key), key=True)
                good = False
            elif not extends(key, value):
                self.add((*path, key), foreign_value(name, key, value))
                good = False
        return good

    def check_references_required(self, data: Mapping[str, Any]) -> None:
        """`references_required` needs references to require."""
        if "references_required" in data and not data.get("references"):
            self.add(("references_required",),
                     "references_required needs references: add the reference templates "
                     "(e.g. references: [\"{image}\"]) or remove this key", key=True)

    def check_routing(self, data: Mapping[str, Any]) -> float | None:
        """`deadline` only with cheapest routing, and a duration it can use."""
        text = data.get("deadline")
        if not isinstance(text, str) or self.broken(("deadline",)):
            return None
        routing = data.get("routing", DEFAULT_ROUTING)
        if routing not in DEADLINE_ROUTINGS:
            wanted = " or ".join(DEADLINE_ROUTINGS)
            self.add(("deadline",), f"deadline is for routing: {wanted} (this job's routing is "
                                    f"{routing}); remove it or set routing: {wanted}", key=True)
            return None
        try:
            return parse_duration(text)
        except ValueError as exc:
            self.add(("deadline",), str(exc))
            return None

    # -- building the spec ------------------------------------------------------------------

    def matrix_spec(self, data: Mapping[str, Any]) -> MatrixSpec:
        raw = data.get("matrix")
        if not isinstance(raw, dict):
            self.blocked = True
            return MatrixSpec()
        axes: dict[str, tuple[str, ...]] = {}
        templates: dict[str, str] = {}
        models: dict[str, tuple[str, ...]] = {}
        for key, values in raw.items():
            if key in ("include", "exclude"):
                continue
            if key in cellmod.RESERVED_NAMES:
                self.add(("matrix", key), f"{key!r} is a built-in template variable; give "
                                          "the axis another name", key=True)
                self.blocked = True
            if isinstance(values, list):
                axes[key] = tuple(text_value(v) for v in values)
            elif key == "prompt" and isinstance(values, dict):
                templates = self.named_prompts(values)
                axes[key] = tuple(templates.values())
            elif key == "model" and isinstance(values, dict):
                models = self.provider_models(raw, values)
                if "provider" not in raw:  # the mapping's pairs are the axis
                    axes["provider"] = tuple(models)
                axes[key] = ()  # every id once, when the provider axis is known (below)
        if models:
            ids = (id_ for p in axes.get("provider", ())
                   for id_ in models.get(p, (DEFAULT_MODEL,)))
            axes["model"] = tuple(dict.fromkeys(ids))
        elif axes.get("model") == ():  # no usable entry: each is reported
            del axes["model"]
            if axes.get("provider") == ():
                del axes["provider"]
        axes.setdefault("aspect_ratio", DEFAULT_ASPECT_RATIOS)
        axes.setdefault("resolution", DEFAULT_RESOLUTIONS)
        entries = {kind: self.entries(raw, kind, templates) for kind in ("include", "exclude")}
        for i, entry in enumerate(entries["exclude"]):
            for key in entry:
                if key not in axes:
                    self.add(("matrix", "exclude", i, key),
                             f"exclude key {key!r} is not a matrix axis (axes: "
                             f"{', '.join(axes)}); exclude entries match axis values",
                             key=True)
        return MatrixSpec(axes, tuple(entries["include"]), tuple(entries["exclude"]),
                          models=models, templates=templates)

    def named_prompts(self, raw: Mapping[str, Any]) -> dict[str, str]:
        """`matrix.prompt` as a mapping name -> text; a text named twice is a problem (one
        request under two names: the cells would be one)."""
        templates: dict[str, str] = {}
        first: dict[str, str] = {}
        for name, text in raw.items():
            if not isinstance(text, str):
                continue  # the schema says what is wrong
            if text in first:
                self.add(("matrix", "prompt", name),
                         f"template {name!r} has the same text as {first[text]!r}: one "
                         "request under two names; remove one of them")
                continue
            first[text] = name
            templates[name] = text
        return templates

    def provider_models(
        self, raw: Mapping[str, Any], mapping: Mapping[str, Any]
    ) -> dict[str, tuple[str, ...]]:
        """`matrix.model` per provider: each provider one of the provider axis (when the
        spec has one; an unknown provider is reported with the others, `check_providers`)."""
        axis = raw.get("provider")
        listed = [p for p in axis if isinstance(p, str)] if isinstance(axis, list) else None
        models: dict[str, tuple[str, ...]] = {}
        for name, ids in mapping.items():
            if not isinstance(ids, list):
                continue  # the schema says what is wrong
            if listed is not None and name not in listed and name in self.known:
                close = difflib.get_close_matches(name, listed, n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                self.add(("matrix", "model", name),
                         f"{name!r} is not in matrix.provider ({', '.join(listed)}): no cell "
                         f"of it would ask for these model ids; {hint}add it to "
                         "matrix.provider or remove it here", key=True)
                continue
            models[name] = tuple(dict.fromkeys(text_value(v) for v in ids))
        return models

    def entries(
        self, raw: Mapping[str, Any], kind: str, templates: Mapping[str, str]
    ) -> list[dict[str, str]]:
        """Include or exclude entries as text; a `prompt` that names a template (named
        prompts) stands for its text."""
        entries = raw.get(kind)
        if not isinstance(entries, list):
            return []
        result = []
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict):
                continue
            for key in entry:
                if key in cellmod.RESERVED_NAMES:
                    self.add(("matrix", kind, i, key),
                             f"{key!r} is a built-in template variable", key=True)
                    self.blocked = True
            values = {key: text_value(value) for key, value in entry.items()}
            if values.get("prompt") in templates:
                values["prompt"] = templates[values["prompt"]]
            result.append(values)
        return result

    def check_cell_count(self, data: Mapping[str, Any], matrix: MatrixSpec) -> None:
        """Refuse a matrix too large to expand before the dataset is even read."""
        repeat = _integer(data.get("repeat"), 1)
        problem = cellmod.cell_count_problem(matrix, repeat, None, self.policy.max_cells)
        if problem is not None:
            self.add(("matrix",), problem)
            self.blocked = self.too_many_cells = True

    def dataset_spec(self, data: Mapping[str, Any]) -> DatasetSpec | None:
        raw = data.get("dataset")
        if not isinstance(raw, dict) or not isinstance(raw.get("path"), str):
            if self.policy.dataset is not None:
                self.add(("dataset",), "--dataset replaces the spec's dataset.path, but this "
                                       "spec has no dataset")
            return None
        fmt = raw.get("format")
        options = raw.get("storage_options")
        given = self.policy.dataset or raw["path"]  # the user's --dataset wins
        policy = self.policy
        if self.policy.dataset is not None and not is_http(given) and "://" not in given:
            given = os.path.abspath(given)  # the user's own file: its folder is allowed
            policy = replace(policy, allow_paths=(*policy.allow_paths, os.path.dirname(given)))
        path = cellmod.resolve_local(given, self.base_dir)
        try:
            path = check_location(given, base_dir=self.base_dir, policy=policy,
                                  what="dataset")
            missing = protocol_problem("http") if is_http(path) else None
            if missing:
                raise InputRefused(f"dataset {given!r}: {missing}")
            refused = fetch_allowed(path, self.policy) if is_http(path) else None
            if refused:  # nbp reads it itself: the host rule of every fetch
                raise InputRefused(f"dataset {given!r}: {refused}")
        except InputRefused as exc:
            self.add(("dataset", "path"), str(exc))
            self.dataset_refused = True
        return DatasetSpec(
            path=path,
            format=fmt if isinstance(fmt, str) else None,
            storage_options=dict(options) if isinstance(options, dict) else {},
            key=self.dataset_key(raw),
            duplicates=raw["duplicates"] if raw.get("duplicates") in DUPLICATE_RULES else "fail",
        )

    def dataset_key(self, raw: Mapping[str, Any]) -> tuple[str, ...]:
        """`dataset.key` as a tuple of column names (the schema checked its shape); a rule
        for repeated keys without a key is a problem (it would silently mean nothing)."""
        key = raw.get("key")
        names = (key,) if isinstance(key, str) else tuple(
            name for name in key if isinstance(name, str)) if isinstance(key, list) else ()
        if not names and "duplicates" in raw and not self.broken(("dataset", "duplicates")):
            self.add(("dataset", "duplicates"), "dataset.duplicates needs dataset.key: the "
                                                "columns whose values must not repeat")
        return names

    def read(self, spec: DatasetSpec | None) -> Dataset | None:
        if spec is None or self.broken(("dataset",)) or self.dataset_refused or self.too_many_cells:
            return None
        try:
            dataset = read_dataset(spec.path, format=spec.format,
                                   storage_options=spec.storage_options,
                                   max_bytes=self.policy.max_dataset_bytes,
                                   max_rows=self.policy.max_dataset_rows,
                                   key=spec.key, duplicates=spec.duplicates)
        except DatasetError as exc:
            self.add(("dataset", "path"), str(exc))
            return None
        for problem in dataset.problems:  # the expansion reports them too: shown once
            self.add(("dataset", "key"), problem)
        if dataset.dropped:
            self.note(("dataset", "duplicates"), _dropped_note(dataset, spec.duplicates))
        if dataset.blank:
            rows = "1 blank row" if dataset.blank == 1 else f"{dataset.blank:,} blank rows"
            self.note(("dataset", "key"), f"{rows} of {dataset.lines.name} left out (no value "
                                          f"in any column), e.g. {dataset.blank_example}")
        return dataset

    def note(self, path: JsonPath, message: str) -> None:
        """A located remark that does not make the spec invalid (`Job.notes`)."""
        position = self.doc.position(path)
        self.notes.append(f"{self.source}:{position.line}:{position.column}: "
                          f"{yamlpos.format_path(path)}: note: {message}")

    def check_columns(self, dataset: Dataset, matrix: MatrixSpec) -> None:
        taken = set(matrix.axes)
        for entry in matrix.include:
            taken.update(entry)
        for column in dataset.columns:
            if column in cellmod.RESERVED_NAMES or column in cellmod.TEMPLATE_BUILTINS:
                self.add(("dataset", "path"), f"column {column!r} has the name of a built-in "
                                              "template variable; rename the column")
                self.blocked = True
            elif column in taken:
                self.add(("dataset", "path"), f"column {column!r} has the name of a matrix "
                                              "variable; rename the column or the axis")
                self.blocked = True

    def check_gallery(
        self, data: Mapping[str, Any], matrix: MatrixSpec, dataset_spec: DatasetSpec | None,
        dataset: Dataset | None,
    ) -> None:
        """`output.gallery`: each name an axis of this job, in rows or in columns, not both.
        Names are not judged when the axes are not all known (no matrix, or a dataset that
        was not read)."""
        raw = _mapping(_mapping(data.get("output")).get("gallery"))
        judged = isinstance(data.get("matrix"), dict) and (dataset_spec is None or
                                                           dataset is not None)
        known = list(dict.fromkeys([
            *matrix.axes, *(key for entry in matrix.include for key in entry),
            *(dataset.columns if dataset is not None else ()), *GALLERY_AXES,
            *(("template",) if matrix.templates else ()),  # the named prompts' names
        ]))
        rows = _gallery_spec(raw).rows
        for side in ("rows", "columns"):
            names = raw.get(side)
            if not isinstance(names, list) or self.broken(("output", "gallery", side)):
                continue
            for i, name in enumerate(names):
                path = ("output", "gallery", side, i)
                if not isinstance(name, str):
                    continue
                if judged and name not in known:
                    close = difflib.get_close_matches(name, known, n=1)
                    hint = f"did you mean {close[0]!r}? " if close else ""
                    self.add(path, f"{name!r} is not an axis of this job; {hint}axes: "
                                   f"{', '.join(known)}")
                elif side == "columns" and name in rows:
                    self.add(path, f"{name!r} is in output.gallery.rows too; an axis makes "
                                   "rows or columns, not both")

    def output_spec(self, data: Mapping[str, Any]) -> OutputSpec:
        raw = data.get("output")
        raw = raw if isinstance(raw, dict) else {}
        name = data.get("name") if isinstance(data.get("name"), str) else "job"
        target: str = raw["target"] if isinstance(raw.get("target"), str) else DEFAULT_TARGET
        try:
            template = Template.parse(target)
            unknown = [n for n in template.names if n != "name"]
            if unknown:
                self.add(("output", "target"), f"placeholder {{{unknown[0]}}}: the target is "
                                               "one folder per job; only {name} is available")
                self.blocked = True
            else:
                target = cellmod.resolve_local(template.render({"name": str(name)}),
                                               self.base_dir)
                self.check_target_protocol(target)
        except TemplateError as exc:
            self.add(("output", "target"), str(exc))
            self.blocked = True
        fmt, path, options = raw.get("format"), raw.get("path"), raw.get("storage_options")
        gallery = raw.get("gallery")
        return OutputSpec(
            target=target,
            format=fmt if isinstance(fmt, str) else "png",
            path=path if isinstance(path, str) else DEFAULT_OUTPUT_PATH,
            storage_options=dict(options) if isinstance(options, dict) else {},
            gallery=_gallery_spec(gallery) if isinstance(gallery, dict) else None,
        )

    def check_target_protocol(self, target: str) -> None:
        protocol = split_protocol(target)[0]
        missing = protocol_problem(protocol) if protocol is not None else None
        if missing:
            self.add(("output", "target"), f"{target!r}: {missing}")

    def job_spec(
        self,
        data: Mapping[str, Any],
        providers: list[str],
        matrix: MatrixSpec,
        dataset: DatasetSpec | None,
        output: OutputSpec,
    ) -> JobSpec | None:
        if self.blocked:
            return None
        limits = {
            name: ProviderLimits(
                rate=value["rate"] if isinstance(value.get("rate"), str) else None,
                max_in_flight=_integer(value.get("max_in_flight"), None),
                poll_interval_s=(
                    float(value["poll_interval"]) if _is_number(value.get("poll_interval"))
                    else None
                ),
                spend=_spend(value.get("spend")),
            )
            for name, value in _mapping(data.get("limits")).items() if isinstance(value, dict)
        }
        budget = _mapping(data.get("budget"))
        return JobSpec(
            name=data["name"] if isinstance(data.get("name"), str) else "job",
            providers=tuple(providers),
            listed=tuple(self.listed),
            output=output,
            source=self.source,
            repeat=_integer(data.get("repeat"), 1),
            retries=_integer(data.get("retries"), DEFAULT_RETRIES),
            fail_fast=data.get("fail_fast") is True,
            max_usd=_usd(budget.get("max_usd")),
            max_total_usd=_usd(budget.get("max_total_usd")),
            seed=_integer(data.get("seed"), None),
            routing=data["routing"] if data.get("routing") in ROUTINGS else DEFAULT_ROUTING,
            deadline_s=self.deadline_s,
            accounts=self.accounts,
            limits=limits,
            options={k: dict(v) for k, v in _mapping(data.get("options")).items()
                     if isinstance(v, dict)},
            prices={
                k: {res: float(usd) for res, usd in _mapping(v).items() if _is_number(usd)}
                for k, v in _mapping(data.get("prices")).items()
            },
            base_urls={k: v for k, v in _mapping(data.get("base_urls")).items()
                       if isinstance(v, str)},
            raw=data,
            credentials={str(k): str(v) for k, v in _mapping(data.get("credentials")).items()},
            matrix=matrix,
            dataset=dataset,
            references=tuple(data.get("references") or ()),
            references_required=_references_required(data.get("references_required")),
            base_dir=self.base_dir,
            policy=self.policy,
            text=self.text,
        )

    def check_template_syntax(self, data: Mapping[str, Any]) -> None:
        """Malformed templates, for a spec that cannot be expanded (names are not judged)."""
        matrix = _mapping(data.get("matrix"))
        places: list[tuple[JsonPath, Any]] = []
        prompts = matrix.get("prompt")
        if isinstance(prompts, list):
            places += [(("matrix", "prompt", i), text) for i, text in enumerate(prompts)]
        elif isinstance(prompts, dict):
            places += [(("matrix", "prompt", name), text) for name, text in prompts.items()]
        for j, entry in enumerate(matrix.get("include") or []):
            if isinstance(entry, dict) and "prompt" in entry:
                places.append((("matrix", "include", j, "prompt"), entry["prompt"]))
        references = data.get("references")
        if isinstance(references, list):
            places += [(("references", i), text) for i, text in enumerate(references)]
        places.append((("output", "path"), _mapping(data.get("output")).get("path")))
        for path, text in places:
            if isinstance(text, str):
                try:
                    Template.parse(text)
                except TemplateError as exc:
                    self.add(path, str(exc))

    # -- locations and provider limits --------------------------------------------------

    def value_path(self, key: str, value: str) -> JsonPath:
        """Where a matrix value is first written: the axis item, else an include entry."""
        where = self._value_paths.get(key)
        if where is None:  # one index per key: 90,000 prompts must not mean 90,000 scans
            where = self._value_paths[key] = {}
            matrix = _mapping(self.doc.value.get("matrix"))
            items = matrix.get(key)
            for i, raw in enumerate(items if isinstance(items, list) else []):
                where.setdefault(text_value(raw), ("matrix", key, i))
            if isinstance(items, dict):  # named prompts; model ids per provider
                for name, raw in items.items():
                    if key == "prompt":
                        where.setdefault(text_value(raw), ("matrix", key, name))
                    elif isinstance(raw, list):
                        for i, value in enumerate(raw):
                            where.setdefault(text_value(value), ("matrix", key, name, i))
            for j, entry in enumerate(matrix.get("include") or []):
                if isinstance(entry, dict) and key in entry:
                    where.setdefault(text_value(entry[key]), ("matrix", "include", j, key))
        return where.get(value, ("matrix", key))

    def check_provider_limits(self, spec: JobSpec, stats: cellmod.Stats) -> None:
        """Each documented limit of each provider against the cells it may run (those
        pinned to it, and the unpinned ones when it is on the `provider:` list), once per
        value; and each pinned model id against the providers that would be asked for it."""
        for pin, limits in stats.pins.items():
            for name in (pin,) if pin is not None else spec.routed:
                caps = self.caps.get(name)
                if caps is not None:
                    _LimitCheck(self, name, caps).run(spec, limits)
                    self.check_models(name, caps, limits.models, pinned=pin is not None)
                    self.check_spend(spec, name, caps, limits)

    def check_spend(
        self, spec: JobSpec, name: str, caps: Capabilities, stats: cellmod.LimitStats
    ) -> None:
        """An image dearer than the provider's spend window holds could never be sent."""
        limits = spec.limits.get(name)
        if limits is None or limits.spend is None or not stats.resolutions:
            return
        rules = provider_rules(spec, name, caps)
        references = stats.most_references
        price, resolution = max((rules.hold(res, references), res) for res in stats.resolutions)
        if price > limits.spend.usd + 1e-9:
            with_refs = f" with {references} reference images" if references else ""
            self.add(("limits", name, "spend", "usd"),
                     f"a {resolution} image{with_refs} costs ${price:.3f} on {name}, more than "
                     f"the ${limits.spend.usd:g} this window allows: it could never be sent; "
                     f"raise usd to at least ${price:.3f} (Google's tiers: $10, $50, $200 per "
                     "600 s)")

    def offers_models(self, name: str) -> bool:
        try:
            return bool(registry.capabilities(name).models)
        except Exception:  # a third-party adapter that cannot load: not a suggestion
            return False

    def check_models(
        self, name: str, caps: Capabilities, models: set[str], *, pinned: bool
    ) -> None:
        """Each model id asked of `name` must be one it offers (`Capabilities.models`)."""
        for model in sorted(models):
            if model in caps.models:
                continue
            offered = (f"it offers {', '.join(caps.models)}" if caps.models else
                       "it runs one model and takes no model id")
            path = self.own_model_path(name, model) if pinned else None
            if path is not None:
                hint = (f"list only {name}'s own model ids under matrix.model.{name}, or "
                        f"`{DEFAULT_MODEL}` (its default model id)")
            elif pinned:
                hint = f"exclude {{provider: {name}, model: {model}}} in the matrix"
            else:
                choosers = [p for p in self.known if self.offers_models(p)]
                hint = (f"pin the cells that name it to {' or '.join(choosers)} with a "
                        "`provider` axis or include entries")
            self.add(path or self.value_path("model", model),
                     f"model {model!r} is not a model id of {name}: {offered}; {hint}")

    def own_model_path(self, name: str, model: str) -> JsonPath | None:
        """Where `matrix.model`, written per provider, lists `model` for provider `name`."""
        ids = _mapping(_mapping(self.doc.value.get("matrix")).get("model")).get(name)
        texts = [text_value(v) for v in ids] if isinstance(ids, list) else []
        return ("matrix", "model", name, texts.index(model)) if model in texts else None

class _LimitCheck:
    """Asks `limit_problems` about one varied field at a time, so each problem it finds
    belongs to exactly one place of the spec."""

    def __init__(self, checker: _Checker, name: str, caps: Capabilities) -> None:
        self.checker, self.name, self.caps = checker, name, caps
        self.neutral = ImageRequest(
            prompt="x" * max(1, caps.min_prompt_chars),
            aspect_ratio=caps.aspect_ratios[0] if caps.aspect_ratios else "1:1",
            resolution=caps.resolutions[0] if caps.resolutions else "1K",
            output_format=caps.output_formats[0] if caps.output_formats else "png",
        )
        self.baseline = set(limit_problems(name, caps, self.neutral))

    def check(self, path: JsonPath, suffix: str = "", **change: Any) -> None:
        if self.checker.broken(path):
            return  # the schema error there says it already
        request = dataclasses.replace(self.neutral, **change)
        for message in limit_problems(self.name, self.caps, request):
            if message not in self.baseline:
                self.checker.add(path, message + suffix)

    def run(self, spec: JobSpec, stats: cellmod.LimitStats) -> None:
        value_path = self.checker.value_path
        for ratio in sorted(stats.aspect_ratios):
            self.check(value_path("aspect_ratio", ratio), aspect_ratio=ratio)
        for resolution in sorted(stats.resolutions):
            self.check(value_path("resolution", resolution), resolution=resolution)
        output = _mapping(spec.raw.get("output"))
        self.check(("output", "format") if "format" in output else ("output",),
                   "" if "format" in output else " (png is the default output.format)",
                   output_format=spec.output.format)
        for template, lengths in stats.prompts.items():
            where = value_path("prompt", template)
            example = f" (e.g. {lengths.longest_example})" if "{" in template else ""
            self.check(where, example, prompt="x" * lengths.longest)
            self.check(where, prompt="x" * lengths.shortest)
        count = stats.most_references
        if count:
            fake = tuple(Reference(f"https://example.invalid/{i}") for i in range(count))
            limit = self.caps.max_references
            path: JsonPath = ("references", limit) if len(spec.references) > limit else (
                "references",)
            suffix = f" (e.g. {stats.most_references_example})" if spec.dataset else ""
            self.check(path, suffix, references=fake)
        for index, uri in sorted(stats.local_references.items()):
            self.check(("references", index), references=(Reference(uri, data=b""),))
        if spec.seed is not None:  # the largest seed a cell sends: seed + the last replicate
            self.check(("seed",), f" (seed + replicate {spec.repeat - 1})" if spec.repeat > 1
                       else "", seed=spec.seed + spec.repeat - 1)


def _dropped_note(dataset: Dataset, rule: str) -> str:
    name, count = dataset.lines.name, dataset.dropped
    rows = (f"1 row of {name} repeats the key of another row and is left out" if count == 1
            else f"{count:,} rows of {name} repeat the key of another row and are left out")
    return (f"{rows} (duplicates: {rule} keeps the {rule} row of each key), e.g. "
            f"{dataset.dropped_example}")


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


def _gallery_spec(raw: Mapping[str, Any]) -> GallerySpec:
    def names(key: str) -> tuple[str, ...]:
        value = raw.get(key)
        return tuple(v for v in value if isinstance(v, str)) if isinstance(value, list) else ()

    return GallerySpec(rows=names("rows"), columns=names("columns"))


def _references_required(value: Any) -> str | None:
    return value if value in ("error", "skip") else None


def _spend(value: Any) -> SpendLimit | None:
    """`limits.<provider>.spend` when it is usable (the schema reports it otherwise)."""
    if not isinstance(value, dict) or not all(_is_number(value.get(k)) for k in ("usd", "window")):
        return None
    try:
        return SpendLimit(float(value["usd"]), float(value["window"]))
    except ValueError:
        return None


def _usd(value: Any) -> float | None:
    return float(value) if value is not None and _is_number(value) else None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _integer(value: Any, default: Any) -> Any:
    if _is_number(value) and float(value).is_integer():
        return int(value)
    return default


# -- the job schema's own words -----------------------------------------------------------


class _JobWording(Wording):
    """What the job schema's patterns and key rules mean; `schemas.messages` words the rest
    as it does for provider options."""

    def pattern(self, path: JsonPath, instance: Any, pattern: str) -> str:
        if path == ("name",):
            return (f"{instance!r} is not a valid job name: lowercase letters, digits, '.', '_' "
                    "and '-', starting with a letter or digit")
        if path[-1:] == ("rate",):
            return f"{instance!r} is not a rate like '20/10s' (N creates per window: ms, s, m, h)"
        if path[:1] == ("base_urls",):
            return f"{instance!r} is not an http(s) URL"
        if path[:1] == ("provider",) or path[:2] == ("matrix", "provider") or (
                path[:2] == ("matrix", "include") and path[-1:] == ("provider",)):
            return f"{instance!r} is not a provider name (lowercase letters, digits, '-', '_')"
        if path == ("deadline",):
            return f"{instance!r} is not a duration like '2h', '90m' or '1h30m' (s, m, h, d)"
        if path[:1] in (("accounts",), ("credentials",)):
            return (f"{instance!r} is not an environment variable name (capitals, digits and "
                    "'_', e.g. KIE_API_KEY_2)")
        return super().pattern(path, instance, pattern)

    def key_name(self, path: JsonPath, key: str) -> str:
        if path[:1] == ("credentials",):
            return f"{key!r} is not an environment variable name (A-Z, 0-9, _), e.g. KIE_API_KEY"
        if path == ("matrix", "prompt"):
            return (f"{key!r} is not a template name: 1 to 64 letters, digits, '_', '.' and "
                    "'-'")
        if path == ("matrix", "model"):
            return f"{key!r} is not a provider name (lowercase letters, digits, '-', '_')"
        if path[:1] == ("matrix",):
            return (f"{key!r} is not a valid variable name: letters, digits and '_', not "
                    "starting with a digit (it is used as a {placeholder})")
        return f"{key!r} is not a provider name (lowercase letters, digits, '-', '_')"

    def either_type(self, path: JsonPath, wanted: str) -> str:
        if path == ("provider",):
            return "a provider name or a list of provider names"
        if path == ("matrix", "prompt"):
            return "a list of prompts or a mapping template name -> prompt"
        if path == ("matrix", "model"):
            return "a list of model ids or a mapping provider -> list of model ids"
        return wanted


_JOB_WORDING = _JobWording()


def _refused_base_url(facts: ProviderFacts, url: str) -> str:
    """Why a spec may not point a provider at `url`; names its origin only (a URL's
    user:password part never shows)."""
    documented = ", ".join(sorted(facts.documented_origins)) or "none"
    return (f"{url_origin(url)} is not where {facts.name}'s API key may go: a spec may point "
            f"{facts.name} at its documented origins ({documented}) or at loopback "
            f"(localhost, 127.0.0.1, ::1) only, so it cannot send your key elsewhere; if you "
            f"mean this server, set {facts.url_variables[0]} in the environment")
