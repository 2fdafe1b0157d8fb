"""A job spec expanded into cells: dataset row × matrix combination × replicate.

    cells = expand(spec)                 # list[Cell], in a stable order
    cells[0].cell_id                     # "3f9a0c1d2b4e5f60"

Each cell's prompt, references and output path are its templates filled with the cell's
variables: the matrix combination, the dataset row, and the built-ins `name`,
`aspect_ratio`, `resolution`, `replicate` (0-based), `format` and `ext`; output paths also get
`cell_id`. A reference template that renders empty is left out of that cell, unless the spec
sets `references_required` (the one place that rule lives, `Expansion._cell`): then such a
cell is never made, so never paid for as a text-only image; with `error` the rows are located
problems (the dataset line where each record starts), with `skip` they are counted in
`Expansion.skipped`. In an output path each value is encoded (`outputs.paths.encode_segment`:
readable, injective, never a separator or a climb) and the path's own text is checked, not
rewritten. With a `dataset.key`, each cell carries its row's key (`Cell.key`: the manifest's
`key_*` columns).

A combination that `include` adds without naming `prompt`, `aspect_ratio` or `resolution`
takes the axis's value when the axis has exactly one (so the defaults `1:1` and `1K` apply);
with several values the include entry must name one.

`cell_id` (see `cell_id`) hashes the provider-neutral request only, so it is the same in
every run, on every machine, whatever the order of the axes and whichever provider of the
fallback list ends up running it. A `provider` or `model` matrix value (`PIN_KEYS`) pins the
cell: only that provider runs it, with that model id, and both are part of its id (two
providers, two cells). An include entry that adds a combination without one takes the axis's
value when the axis has exactly one; otherwise the cell is not pinned. The model id
`default` (`DEFAULT_MODEL`) pins no model: the provider's default model id, the same cell as
one without a model value. `matrix.model` written per provider (`MatrixSpec.models`) crosses
each provider with its own ids (`flows.spec.matrix.Dependent`); the cells are exactly those
the same pairs written as include entries give.

Prompts written as a mapping name -> text name their templates: `Cell.template`, and the
built-in `{template}` (unless the spec has its own variable `template`, which wins); an
include entry's `prompt` may be such a name (the loader puts in its text). Ids hash the
rendered prompt, so naming prompts changes no id.

An include entry that overwrites a value an earlier entry added (GitHub Actions allows it
silently) is a note (`Expansion.notes`), not a problem.

Two cells with the same id and the same output path are one cell (e.g. an axis that neither
the prompt nor the path uses): it is kept once. The same id with different paths would pay
twice for one request: that is a problem.

Expansion is also the last step of validation: `Expansion.run()` collects `Issue`s (missing
or refused reference files, dataset key problems, colliding output paths (or paths that
differ only in case), identical requests, output paths that are nbp's own files...) instead
of raising, and `flows.spec.loader` turns them into located
problems. It never expands more than `InputPolicy.max_cells` cells: the count is bounded
from the axis sizes first (`cell_count_problem`).
"""

from __future__ import annotations

import hashlib
import json.encoder
import math
import os
import stat
from collections.abc import Callable, Container, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from nbp.flows.spec import matrix as gha
from nbp.flows.spec.collisions import CellKeys, Pairs, find_collisions
from nbp.flows.spec.dataset import Dataset, read_dataset
from nbp.flows.spec.inputs import (
    LOCAL_PROTOCOLS,
    MAX_CELLS_ENV,
    InputRefused,
    check_location,
    is_http,
    split_protocol,
)
from nbp.flows.spec.model import (
    DEFAULT_MODEL,
    NO_KEY,
    Cell,
    InputFile,
    JobSpec,
    MatrixSpec,
    SkippedRows,
)
from nbp.flows.spec.records import MAX_LISTED, dataset_lines, file_name, places
from nbp.flows.spec.templating import MissingVariable, Template, TemplateError
from nbp.flows.spec.yamlpos import JsonPath
from nbp.outputs.layout import STATE_DIR, TEMP_MARKER
from nbp.outputs.paths import check_output_path, encode_segment, template_text_problem

ID_CHARS = 16
REQUEST_KEYS = ("prompt", "aspect_ratio", "resolution")  # every cell needs these
PIN_KEYS = ("provider", "model")  # matrix values that pin a cell to a channel and model id
TEMPLATE_BUILTINS = ("name", "aspect_ratio", "resolution", "replicate", "format", "ext")
TEMPLATE_NAME = "template"  # built-in with named prompts: the cell's template name
RESERVED_NAMES = frozenset({"name", "replicate", "format", "ext", "cell_id"})
MAX_MISSING_FILES = 10  # and as many refused references: the rest are counted
# nbp's own files in a target (outputs.manifest.MANIFEST_NAME, outputs.gallery.GALLERY_NAME,
# outputs.layout.STATE_DIR and TEMP_MARKER): an image written there would destroy them
OWN_FILES = ("manifest.parquet", "index.html")
# include/exclude entries x combinations, per allowed cell: matching costs about what a cell
# costs to expand, so a matrix that would take longer than max_cells cells is refused too
MATRIX_CHECKS_PER_CELL = 50
MAX_DIFFERENCES = 100  # colliding pairs whose differing variables a message names
_json_string: Callable[[str], str] = json.encoder.encode_basestring  # as ensure_ascii=False


@dataclass(frozen=True)
class Issue:
    """A reason the spec cannot expand, shown at `path` (a JSON path into the spec)."""

    path: JsonPath
    message: str
    key: bool = False  # point at the key rather than the value


class ExpansionError(ValueError):
    def __init__(self, issues: Sequence[Issue]) -> None:
        super().__init__("; ".join(issue.message for issue in issues))
        self.issues = list(issues)


@dataclass
class PromptStats:
    """Lengths of one prompt template's renderings, for provider prompt limits."""

    shortest: int
    longest: int
    longest_example: str


@dataclass
class LimitStats:
    """What validation needs to check one provider's limits against the cells it may run,
    without looking at every cell again."""

    aspect_ratios: set[str] = field(default_factory=set)
    resolutions: set[str] = field(default_factory=set)
    models: set[str] = field(default_factory=set)  # pinned model ids
    prompts: dict[str, PromptStats] = field(default_factory=dict)  # template -> lengths
    most_references: int = 0
    most_references_example: str = ""
    # template index -> the first rendering that is not an http(s) URL (must be delivered)
    local_references: dict[int, str] = field(default_factory=dict)


@dataclass
class Stats:
    """Numbers of one expansion; `pins` has the limit numbers per pinned provider (None: the
    cells without one, which run on the spec's `provider:` list)."""

    combinations: int = 0
    rows: int | None = None
    merged: int = 0  # cells dropped as identical to an earlier one (request and path)
    pins: dict[str | None, LimitStats] = field(default_factory=dict)

    def pin(self, provider: str | None) -> LimitStats:
        found = self.pins.get(provider)
        if found is None:
            found = self.pins[provider] = LimitStats()
        return found


def expand(spec: JobSpec) -> list[Cell]:
    """Every cell of a validated spec, held in a list; raises `ExpansionError` when it
    cannot expand. (`flows.spec.loader.load_job` returns cells that expand again on each
    pass instead.)"""
    expansion = Expansion(spec)
    cells = expansion.run(keep=True)
    if expansion.issues:
        raise ExpansionError(expansion.issues)
    return list(cells)


def cell_id(
    prompt: str,
    aspect_ratio: str,
    resolution: str,
    output_format: str,
    reference_identities: Sequence[str],
    seed: int | None,
    replicate: int,
    provider: str | None = None,
    model: str | None = None,
) -> str:
    """Stable id of a request: sha256 of its canonical JSON, 16 hex chars. A cell pinned to
    a provider or model (`PIN_KEYS`) has them in its id; an unpinned cell's id is the
    provider-neutral request's alone, whichever channel ends up running it."""
    # json.dumps([...], ensure_ascii=False, separators=(",", ":")), spelled out: 3x faster
    refs = ",".join(_json_string(r) for r in reference_identities)
    canonical = (
        f"[{_json_string(prompt)},{_json_string(aspect_ratio)},{_json_string(resolution)},"
        f"{_json_string(output_format)},[{refs}],{'null' if seed is None else int(seed)},"
        f"{int(replicate)}"
    )
    if provider is not None or model is not None:
        canonical += f",{_json_or_null(provider)},{_json_or_null(model)}"
    canonical += "]"
    return hashlib.sha256(canonical.encode()).hexdigest()[:ID_CHARS]


def _json_or_null(text: str | None) -> str:
    return "null" if text is None else _json_string(text)


def is_remote(uri: str) -> bool:
    """http(s) or any other fsspec URL (`s3://...`, any case); `file://` counts as local."""
    protocol = split_protocol(uri)[0]
    return protocol is not None and protocol not in LOCAL_PROTOCOLS


def resolve_local(uri: str, base_dir: str) -> str:
    """A local path made absolute against the spec's folder; a URL with its protocol in
    lower case (`S3://b/k` -> `s3://b/k`)."""
    protocol, rest = split_protocol(uri)
    if protocol is not None and protocol not in LOCAL_PROTOCOLS:
        return f"{protocol}://{rest}"
    return os.path.normpath(os.path.join(base_dir, os.path.expanduser(rest)))


def own_file(output_path: str) -> str | None:
    """Which of nbp's own files a sanitised output path would overwrite, if any
    (case-insensitively: `Manifest.parquet` is the manifest on macOS and Windows)."""
    parts = output_path.lower().split("/")
    if len(parts) == 1 and parts[0] in OWN_FILES:
        return parts[0]
    if parts[0] == STATE_DIR:
        return f"{STATE_DIR}/ (the journal)"
    if any(TEMP_MARKER in part for part in parts):
        return f"a temporary file ({TEMP_MARKER}...)"
    return None


def cell_count_problem(
    matrix: MatrixSpec, repeat: int, rows: int | None, max_cells: int
) -> str | None:
    """Why a job would have more than `max_cells` cells, judged from the axis sizes without
    expanding: the product before exclude, plus one per include entry, times the dataset
    rows (when known) and `repeat`; or why matching its include and exclude entries would
    take too long (more than `MATRIX_CHECKS_PER_CELL` x `max_cells` entry x combination
    checks). None when it is within the limits."""
    product = gha.size(matrix.axes, _dependents(matrix))
    entries = len(matrix.include) + len(matrix.exclude)
    checks = product * entries
    if checks > MATRIX_CHECKS_PER_CELL * max_cells:
        return (
            f"include and exclude are matched against every combination: {_number(product)} "
            f"combinations x {entries:,} entries = {_number(checks)} checks, more than the "
            f"{MATRIX_CHECKS_PER_CELL * max_cells:,} nbp makes ({MATRIX_CHECKS_PER_CELL} per "
            f"cell of --max-cells N or {MAX_CELLS_ENV}, {max_cells:,}); use fewer entries "
            "or a dataset"
        )
    total = (product + len(matrix.include)) * (1 if rows is None else rows) * max(repeat, 1)
    if total <= max_cells:
        return None
    varied = [f"{n:,} {k}" for k, n in _axis_sizes(matrix) if n > 1]
    axes = " x ".join(varied[:8]) + (" x ..." if len(varied) > 8 else "")
    parts = [f"{axes or 'one value per axis'} = {_number(product)} combinations "
             "before exclude"]
    if matrix.include:
        parts.append(f"+ {len(matrix.include)} include entries")
    if rows is not None:
        parts.append(f"x {rows:,} dataset rows")
    if repeat > 1:
        parts.append(f"x repeat {repeat:,}")
    return (
        f"this job would have up to {_number(total)} cells ({', '.join(parts)}); nbp expands "
        f"at most {max_cells:,} (raise the limit with --max-cells N or {MAX_CELLS_ENV})"
    )


def _axis_sizes(matrix: MatrixSpec) -> list[tuple[str, int]]:
    """Each axis and its number of values; with models per provider, provider and model
    count as one axis of (provider, model) pairs."""
    dependent = model_axis(matrix)
    if dependent is None:
        return [(key, len(values)) for key, values in matrix.axes.items()]
    pairs = sum(len(dependent.of(p)) for p in matrix.axes.get("provider", ()))
    return [("provider x model" if key == "provider" else key,
             pairs if key == "provider" else len(values))
            for key, values in matrix.axes.items() if key != "model"]


def _number(n: int) -> str:
    # bit_length: str() of a number with more than 4,300 digits raises
    return f"{n:,}" if n < 10**15 else f"about 10^{int(n.bit_length() * math.log10(2))}"


class FileIdentities:
    """What local reference files contribute to cell ids: the sha256 of each file's content,
    read once per path, size and mtime. Each `Expansion` owns one, so the hashes live as long
    as the cells identified with them, not as long as the process.

        identities = FileIdentities()
        identities.of("/photos/a.png")        # "sha256:9f86d0..."
    """

    def __init__(self) -> None:
        self._known: dict[tuple[str, int, int], str] = {}

    def of(self, path: str, info: os.stat_result | None = None) -> str:
        """The identity of the file at `path`; `info`: its `os.stat`, when the caller has it.
        Raises `OSError` (`FileNotFoundError`...) for a file that cannot be read."""
        info = os.stat(path) if info is None else info
        key = (path, info.st_size, info.st_mtime_ns)
        identity = self._known.get(key)
        if identity is None:
            identity = self._known[key] = f"sha256:{_sha256(path)}"
        return identity

    def __len__(self) -> int:
        return len(self._known)

    def files(self) -> dict[str, str]:
        """Every file read, path -> sha256 hex (its latest content, when it changed)."""
        return {path: identity.removeprefix("sha256:")
                for (path, _, _), identity in self._known.items()}


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_rows(spec: JobSpec) -> Dataset | None:
    if spec.dataset is None:
        return None
    return read_dataset(
        spec.dataset.path, format=spec.dataset.format,
        storage_options=spec.dataset.storage_options,
        max_bytes=spec.policy.max_dataset_bytes, max_rows=spec.policy.max_dataset_rows,
        key=spec.dataset.key, duplicates=spec.dataset.duplicates,
    )


def combinations(spec: JobSpec) -> list[gha.Combination]:
    m = spec.matrix
    return gha.expand(m.axes, m.include, m.exclude, _dependents(m))


def _dependents(matrix: MatrixSpec) -> dict[str, gha.Dependent] | None:
    dependent = model_axis(matrix)
    return None if dependent is None else {"model": dependent}


def model_axis(matrix: MatrixSpec) -> gha.Dependent | None:
    """`matrix.model` written per provider, as the axis that depends on `provider`."""
    if not matrix.models:
        return None
    return gha.Dependent("provider", matrix.models, (DEFAULT_MODEL,))


def pinned_model(model: str | None) -> str | None:
    """The model id a matrix value pins: None for none and for `default`."""
    return None if model == DEFAULT_MODEL else model


ValuePath = Callable[[str, str], JsonPath]


def _default_value_path(key: str, value: str) -> JsonPath:
    return ("matrix", key)


class Expansion:
    """One pass over every cell of a spec, collecting `issues` and `stats` on the way.

    `value_path(key, value)` says where a matrix value is written in the spec (for issue
    locations); `dataset` saves reading the file again when the caller already has it.
    """

    def __init__(
        self,
        spec: JobSpec,
        *,
        dataset: Dataset | None = None,
        value_path: ValuePath = _default_value_path,
    ) -> None:
        self.spec = spec
        self.dataset = dataset if dataset is not None else read_rows(spec)
        self.value_path = value_path
        self.issues: list[Issue] = []
        self.notes: list[Issue] = []  # remarks that do not make the spec invalid
        self.stats = Stats(rows=None if self.dataset is None else len(self.dataset.rows))
        self._reported: set[tuple[JsonPath, str]] = set()
        self._missing_files: dict[str, None] = {}
        self._missing_file_issues = 0
        self._refused_issues = 0
        self._own_file_reported = False
        self._missing_vars: set[tuple[JsonPath, str]] = set()
        self._references: dict[str, tuple[str, str]] = {}  # rendered -> (uri, identity)
        self.identities = FileIdentities()
        self._shared_paths = _Collisions()
        self._case_paths = _Collisions()
        self._identical_requests = _Collisions()
        self._bad_paths = 0
        self._verbatim_prompts = False  # a malformed prompt stands in as plain text
        self._empty: _EmptyReferences = _EmptyReferences()  # references_required
        self.skipped: SkippedRows | None = None  # what references_required: skip left out

    # -- issues -------------------------------------------------------------------------

    def report(self, path: JsonPath, message: str, *, key: bool = False) -> None:
        """Record an issue once per place and message."""
        if (path, message) not in self._reported:
            self._reported.add((path, message))
            self.issues.append(Issue(path, message, key))

    def where(self, row: int | None) -> str | None:
        """Where a dataset row starts in its file ("line 11 of products.csv"), for messages."""
        return None if row is None or self.dataset is None else self.dataset.where(row)

    def describe(self, cell_vars: Mapping[str, str], row: int | None) -> str:
        """A cell for a message: where its row is, then its first variables."""
        return _describe(cell_vars, self.where(row))

    # -- templates ----------------------------------------------------------------------

    def variables(self) -> set[str]:
        """Names a template may use (path templates additionally get cell_id)."""
        names = self.own_variables() | set(TEMPLATE_BUILTINS)
        if self.spec.matrix.templates:
            names.add(TEMPLATE_NAME)
        return names

    def own_variables(self) -> set[str]:
        """The spec's own variables: axes, include keys, dataset columns."""
        names = set(self.spec.matrix.axes)
        for entry in self.spec.matrix.include:
            names.update(entry)
        if self.dataset is not None:
            names.update(self.dataset.columns)
        return names

    def template(
        self, text: str, path: JsonPath, known: set[str], what: str
    ) -> Template | None:
        try:
            template = Template.parse(text)
        except TemplateError as exc:
            self.report(path, str(exc))
            return None
        unknown = [name for name in template.names if name not in known]
        for name in unknown:
            self.report(path, _unknown_placeholder(name, known, what,
                                                   named=bool(self.spec.matrix.templates)))
        return None if unknown else template

    def templates(self) -> tuple[dict[str, Template], list[Template | None], Template | None]:
        known = self.variables()
        prompt_known = known - {"prompt"}
        prompts: dict[str, Template] = {}
        for text in self._distinct("prompt"):
            parsed = self.template(text, self.value_path("prompt", text), prompt_known, "prompt")
            if parsed is not None:
                prompts[text] = parsed
        references = [
            self.template(text, ("references", i), prompt_known, "reference")
            for i, text in enumerate(self.spec.references)
        ]
        path = self.template(
            self.spec.output.path, ("output", "path"), known | {"cell_id"}, "output path"
        )
        layout = None if path is None else template_text_problem(path.literals())
        if layout is not None:
            self.report(("output", "path"), layout)
            path = None
        return prompts, references, path

    def _distinct(self, key: str) -> list[str]:
        values = dict.fromkeys(self.spec.matrix.axes.get(key, ()))
        for entry in self.spec.matrix.include:
            if key in entry:
                values[entry[key]] = None
        return list(values)

    # -- expansion ----------------------------------------------------------------------

    def complete(self, combos: list[gha.Combination]) -> list[dict[str, str]]:
        """Fill the request keys an added combination left out, where that is unambiguous;
        a pin key (`PIN_KEYS`) is filled when its axis has one value, else the combination
        is not pinned by it (and runs on the `provider:` list)."""
        axes = self.spec.matrix.axes
        dependent = model_axis(self.spec.matrix)
        pin_keys = PIN_KEYS if dependent is None else ("provider",)
        complete: list[dict[str, str]] = []
        self._overwrites(combos)
        for combo in combos:
            values = combo.values
            missing = [key for key in REQUEST_KEYS if key not in values]
            ambiguous = [key for key in missing if len(axes.get(key, ())) != 1]
            if ambiguous and combo.added_by is not None:
                self.report(
                    ("matrix", "include", combo.added_by),
                    f"this include entry adds a new combination without {_names(ambiguous)} "
                    "and the matrix has several values for it; name one in the entry "
                    "(an entry that matches no combination is added as a new one, "
                    "GitHub Actions semantics)",
                )
                continue
            missing += [key for key in pin_keys
                        if key not in values and len(axes.get(key, ())) == 1]
            if missing:
                values = {**values, **{key: axes[key][0] for key in missing}}
            if dependent is not None and "model" not in values and "provider" in values:
                models = dependent.of(values["provider"])  # that provider's own ids
                if len(models) == 1:
                    values = {**values, "model": models[0]}
            if "provider" not in values and not self.spec.routed:
                self._unrouted(combo)
                continue
            complete.append(values)
        return complete

    def _overwrites(self, combos: Sequence[gha.Combination]) -> None:
        """A note per include entry that overwrote what an earlier one set, per key."""
        found: dict[tuple[int, int, str], list[Any]] = {}  # -> [count, old, new, provider]
        for combo in combos:
            for o in combo.overwrites or ():
                seen = found.get((o.later, o.earlier, o.key))
                if seen is None:
                    found[o.later, o.earlier, o.key] = [1, o.old, o.new,
                                                        combo.values.get("provider")]
                else:
                    seen[0] += 1
        for (later, earlier, key), (count, old, new, provider) in sorted(found.items()):
            if key == "model" and provider is not None:
                hint = (f"to ask for both, give the provider its model ids: "
                        f"`model: {{{provider}: [{old}, {new}]}}`")
            else:
                hint = f"to have both, make it a list axis: `{key}: [{old}, {new}]`"
            self.notes.append(Issue(
                ("matrix", "include", later, key),
                f"this include entry overwrites {key} {old!r}, which include[{earlier}] set, "
                f"with {new!r} in {_combinations(count)}, so they lose {old!r} (GitHub "
                "Actions semantics: an entry merges into every combination it matches, over "
                f"what earlier entries added); {hint}",
            ))

    def _unrouted(self, combo: gha.Combination) -> None:
        """A combination without a provider in a job whose `provider:` is not set."""
        path: JsonPath = ("matrix",) if combo.added_by is None else (
            "matrix", "include", combo.added_by)
        self.report(path, "this combination names no provider and the job has no "
                          "`provider:` list for such cells; name a provider in it or set "
                          "provider:")

    def run(self, *, keep: bool = False) -> ExpandedCells:
        """Every cell, as a source that expands again on each pass (see `ExpandedCells`);
        problems go to `issues`, numbers for limit checks to `stats`. `keep`: hold the cells
        this pass builds instead (~0.6 KB each), for callers that read them all right away
        (`expand`, `nbp plan`) and would otherwise pay a second pass."""
        if self.dataset is not None:
            for problem in self.dataset.problems:
                self.report(("dataset", "key"), problem)
        recipe = self._recipe()
        if recipe is None:
            return ExpandedCells(self, None, 0)
        keys = CellKeys()
        # Held cells in one list and their positions in another: a (position, cell) pair
        # each would double the objects the cyclic GC rescans while the list grows (held,
        # 100,000 cells cost it ~0.15 s of CPU, bench/planning.py's spec; not held, nothing).
        held: list[Cell] = []
        positions: list[int] = []
        for position, cell in self.candidates(recipe, check=True):
            keys.add(position, cell.cell_id, cell.output_path)
            if keep:
                held.append(cell)
                positions.append(position)
        dropped = self._check_unique(recipe, keys)
        self._summarise()
        cells = ExpandedCells(self, recipe, len(keys) - len(dropped), dropped)
        if keep:
            cells.hold([cell for position, cell in zip(positions, held, strict=True)
                        if position not in dropped] if dropped else held)
        return cells

    def _recipe(self) -> _Recipe | None:
        """What every pass over the cells needs; None when the matrix is over the limit."""
        spec = self.spec
        prompts, references, path_template = self.templates()
        self._verbatim_prompts = len(prompts) < len(self._distinct("prompt"))
        too_many = cell_count_problem(
            spec.matrix, spec.repeat, self.stats.rows, spec.policy.max_cells
        )
        if too_many is not None:
            self.report(("matrix",), too_many)
            return None
        combos = self.complete(combinations(spec))
        if not combos and not self.issues:
            self.report(("matrix",), "the matrix has no combinations: exclude removes them all")
        self.stats.combinations = len(combos)
        for values in combos:
            pinned = self.stats.pin(values.get("provider"))
            pinned.aspect_ratios.add(values["aspect_ratio"])
            pinned.resolutions.add(values["resolution"])
            model = pinned_model(values.get("model"))
            if model is not None:
                pinned.models.add(model)
        if path_template is None:  # reported; keep checking everything else
            path_template = Template.parse("{cell_id}.{ext}")
        fmt = spec.output.format
        builtins = {"name": spec.name, "format": fmt, "ext": fmt}
        return _Recipe(self._prompts(prompts, builtins), references, path_template, combos,
                       builtins)

    def _prompts(
        self, parsed: Mapping[str, Template], builtins: Mapping[str, str]
    ) -> dict[str, _Prompt]:
        """Every prompt text a combination may hold, with its name and built-ins."""
        names = {text: name for name, text in self.spec.matrix.templates.items()}
        own = TEMPLATE_NAME in self.own_variables()  # the spec's own `template` wins
        prompts = {}
        for text in self._distinct("prompt"):
            name = names.get(text)
            values = builtins if name is None or own else {**builtins, TEMPLATE_NAME: name}
            prompts[text] = _Prompt(parsed.get(text) or _verbatim(text), name, values)
        return prompts

    def candidates(
        self, recipe: _Recipe, dropped: Container[int] = (), *, check: bool = False
    ) -> Iterator[tuple[int, Cell]]:
        """(position, cell) of every cell that expands, in order: the position counts every
        dataset row x combination x replicate, so it names a cell on every pass. Positions in
        `dropped` are skipped; `check` also gathers `stats` (validation's pass)."""
        spec, dataset = self.spec, self.dataset
        rows: Sequence[Mapping[str, str]] = dataset.rows if dataset else [{}]
        position = index = 0
        for row_index, row in enumerate(rows):
            number = dataset.number(row_index) if dataset is not None else None
            key = dataset.key_of(row_index) if dataset is not None and dataset.key else NO_KEY
            for values in recipe.combos:
                prompt = recipe.prompts[values["prompt"]]
                pin = (values.get("provider"), pinned_model(values.get("model")))
                cell_vars = {**values, **row}
                for replicate in range(spec.repeat):
                    position += 1
                    if position in dropped:
                        continue
                    cell = self._cell(
                        index, cell_vars, {**cell_vars, **prompt.builtins}, replicate,
                        number, prompt.template, recipe.references, recipe.path_template,
                        pin, check=check, key=key, template_name=prompt.name,
                    )
                    if cell is not None:
                        index += 1
                        yield position, cell

    def _cell(
        self,
        index: int,
        cell_vars: dict[str, str],
        values: dict[str, str],
        replicate: int,
        row: int | None,
        prompt_template: Template,
        reference_templates: list[Template | None],
        path_template: Template,
        pin: tuple[str | None, str | None] = (None, None),
        *,
        check: bool = True,
        key: Mapping[str, Any] = NO_KEY,
        template_name: str | None = None,
    ) -> Cell | None:
        spec = self.spec
        provider, model = pin
        limits = self.stats.pin(provider)
        values["replicate"] = str(replicate)
        try:
            prompt = prompt_template.render(values)
        except MissingVariable as exc:
            prompt_path = self.value_path("prompt", prompt_template.text)
            self._missing_variable(prompt_path, exc.name, cell_vars, row)
            return None
        uris: list[str] = []
        identities: list[str] = []
        empty: list[int] = []
        for i, template in enumerate(reference_templates):
            if template is None:  # malformed, reported: check the others
                continue
            try:
                text = template.render(values).strip()
            except MissingVariable as exc:
                self._missing_variable(("references", i), exc.name, cell_vars, row)
                return None
            if not text:
                empty.append(i)
                continue
            known = self._references.get(text)
            if known is None:
                known = self._references[text] = self._reference(
                    i, template, text, cell_vars, row
                )
            uri = known[0]
            identities.append(known[1])
            if i not in limits.local_references and not is_http(uri):
                limits.local_references[i] = uri
            uris.append(uri)
        if empty and spec.references_required:  # never a cell without its references
            if check:
                self._empty.add(empty, row, cell_vars)
            return None
        seed = None if spec.seed is None else spec.seed + replicate
        ratio, resolution, fmt = values["aspect_ratio"], values["resolution"], values["format"]
        cid = cell_id(prompt, ratio, resolution, fmt, identities, seed, replicate,
                      provider, model)
        values["cell_id"] = cid
        try:
            output_path = path_template.render(values, escape=encode_segment)
            check_output_path(output_path)
        except MissingVariable as exc:
            self._missing_variable(("output", "path"), exc.name, cell_vars, row)
            return None
        except ValueError as exc:
            self._bad_path(str(exc), cell_vars, row)
            return None
        taken = own_file(output_path)
        if taken is not None:
            self._own_file(output_path, taken, cell_vars, row)
            return None
        if check:
            self._count(limits, prompt_template.text, prompt, len(uris), cell_vars, row)
        return Cell(
            cell_id=cid, index=index, prompt=prompt, aspect_ratio=ratio,
            resolution=resolution, output_format=fmt, references=tuple(uris),
            vars=cell_vars, replicate=replicate, output_path=output_path, seed=seed,
            dataset_row=row, key=key, provider=provider, model=model,
            template=template_name,
        )

    def _count(
        self, limits: LimitStats, template: str, prompt: str, references: int,
        cell_vars: Mapping[str, str], row: int | None,
    ) -> None:
        stats = limits.prompts.get(template)
        length = len(prompt)
        if stats is None:
            limits.prompts[template] = PromptStats(length, length, self.describe(cell_vars, row))
        elif length > stats.longest:
            stats.longest, stats.longest_example = length, self.describe(cell_vars, row)
        elif length < stats.shortest:
            stats.shortest = length
        if references > limits.most_references:
            limits.most_references = references
            limits.most_references_example = self.describe(cell_vars, row)

    def _missing_variable(
        self, path: JsonPath, name: str, cell_vars: Mapping[str, str], row: int | None
    ) -> None:
        if (path, name) in self._missing_vars:
            return
        self._missing_vars.add((path, name))
        if name == TEMPLATE_NAME and self.spec.matrix.templates and (
                TEMPLATE_NAME not in self.own_variables()):
            self.report(path, f"placeholder {{template}} has no value in some cells, e.g. "
                              f"{self.describe(cell_vars, row)}: their prompt is an include "
                              "entry's own text, not a named template; name it in "
                              "matrix.prompt and give the include entry its name")
            return
        self.report(
            path,
            f"placeholder {{{name}}} has no value in some cells, e.g. "
            f"{self.describe(cell_vars, row)}: only some include entries set {name!r}; set it "
            "in every combination or drop the placeholder",
        )

    def _reference(
        self, index: int, template: Template, text: str, cell_vars: Mapping[str, str],
        row: int | None,
    ) -> tuple[str, str]:
        """(uri, identity) of one rendered reference; a refused, missing or oversized one
        is reported and stands in with a placeholder identity, so expansion goes on."""
        spec = self.spec
        try:
            uri = check_location(text, base_dir=spec.base_dir, policy=spec.policy)
        except InputRefused as exc:
            self._refused(index, template, str(exc), cell_vars, row)
            return text, f"refused:{text}"
        if is_remote(uri):
            return uri, uri
        try:
            info = os.stat(uri)
        except OSError:
            self._missing_file(index, template, uri, row)
            return uri, f"missing:{uri}"
        limit = spec.policy.max_reference_bytes
        if not stat.S_ISREG(info.st_mode) or info.st_size > limit:
            what = (f"is {info.st_size:,} bytes, more than the {limit:,} nbp reads "
                    "(InputPolicy.max_reference_bytes)") if stat.S_ISREG(info.st_mode) else (
                "is not a regular file")
            self._refused(index, template, f"reference image {uri!r} {what}", cell_vars, row)
            return uri, f"refused:{uri}"
        try:
            return uri, self.identities.of(uri, info)
        except OSError:  # unreadable: reported like a missing file
            self._missing_file(index, template, uri, row)
            return uri, f"missing:{uri}"

    def _refused(
        self, index: int, template: Template, message: str, cell_vars: Mapping[str, str],
        row: int | None,
    ) -> None:
        """A reference nbp will not read, at the template's line; the dataset row or the
        cell's variables say which value it came from."""
        self._refused_issues += 1
        if self._refused_issues > MAX_MISSING_FILES:
            return
        columns = set(self.dataset.columns) if self.dataset is not None else set()
        if row is not None and columns & set(template.names):
            message = f"{self.where(row)}: {message}"
        elif template.names:
            message = f"{message} (for {self.describe(cell_vars, row)})"
        self.report(("references", index), message)

    def _own_file(
        self, output_path: str, taken: str, cell_vars: Mapping[str, str], row: int | None
    ) -> None:
        if self._own_file_reported:
            return
        self._own_file_reported = True
        self.report(
            ("output", "path"),
            f"output path {output_path!r} (for {self.describe(cell_vars, row)}) is nbp's own "
            f"{taken} in the target; an image there would overwrite it. nbp keeps "
            f"{', '.join(OWN_FILES)} and {STATE_DIR}/ for itself: change output.path",
        )

    def _missing_file(self, index: int, template: Template, uri: str, row: int | None) -> None:
        if uri in self._missing_files:
            return
        self._missing_files[uri] = None
        columns = set(self.dataset.columns) if self.dataset is not None else set()
        from_data = row is not None and bool(template.names) and set(template.names) <= columns
        self._missing_file_issues += 1
        if self._missing_file_issues > MAX_MISSING_FILES:
            return
        if from_data:
            shown = ", ".join(f"column {n!r}" for n in template.names)
            self.report(
                ("dataset", "path"),
                f"{self.where(row)} ({shown}): reference image {uri!r} does not exist",
            )
        else:
            self.report(("references", index), f"reference image {uri!r} does not exist")

    def _check_unique(self, recipe: _Recipe, keys: CellKeys) -> frozenset[int]:
        """Positions of cells identical to an earlier one (same request, same path), to be
        dropped; cells sharing a path or a request are recorded for `_summarise`."""
        found = find_collisions(keys, ids_meaningful=not self._verbatim_prompts,
                                examples=MAX_DIFFERENCES)
        self.stats.merged = len(found.merged)
        wanted = found.positions()
        if wanted:  # the spec is invalid: one more pass, up to the cells the messages name
            cells = self._cells_at(recipe, wanted)
            self._identical_requests = _Collisions.of(found.identical, cells)
            self._shared_paths = _Collisions.of(found.shared, cells)
            self._case_paths = _Collisions.of(found.case, cells)
        return found.merged

    def _cells_at(self, recipe: _Recipe, positions: set[int]) -> dict[int, Cell]:
        last = max(positions)
        found: dict[int, Cell] = {}
        for position, cell in self.candidates(recipe):
            if position in positions:
                found[position] = cell
            if position >= last:
                break
        return found

    def _summarise(self) -> None:
        self._without_references()
        shared = self._shared_paths
        if shared.example is not None:
            first, second = shared.example
            names = list(shared.differ) or ["cell_id"]
            hint = ", ".join(f"{{{name}}}" for name in names[:3])
            self.report(
                ("output", "path"),
                f"{_cells(shared.count)} write to a path another cell writes, e.g. "
                f"{first.cell_id} ({self.describe(first.vars, first.dataset_row)}) and "
                f"{second.cell_id} ({self.describe(second.vars, second.dataset_row)}) both write "
                f"{second.output_path!r}; add {hint} or {{cell_id}} to output.path",
            )
        self._case_only()
        same = self._identical_requests
        if same.example is not None:
            self._identical(same)
        if self._bad_paths > MAX_MISSING_FILES:
            self.report(("output", "path"), f"{self._bad_paths} cells in all have no usable "
                                            f"output path (the first {MAX_MISSING_FILES} "
                                            "are listed)")
        if self._missing_file_issues > MAX_MISSING_FILES:
            self.report(
                ("references",),
                f"{self._missing_file_issues} reference images in all do not exist",
            )
        if self._refused_issues > MAX_MISSING_FILES:
            self.report(
                ("references",),
                f"{self._refused_issues} references in all are refused (the first "
                f"{MAX_MISSING_FILES} are listed)",
            )

    def _without_references(self) -> None:
        """Cells `references_required` refused: one problem per template that rendered
        empty (`error`), or `skipped` (`skip`)."""
        found = self._empty
        if not found.cells:
            return
        where = self._row_places()
        templates = self.spec.references
        if self.spec.references_required == "error":
            for index, rows in found.templates.items():
                self.report(("references", index), rows.problem(templates[index], where,
                                                                self.stats.rows))
            return
        parts = "; ".join(f"{templates[index]!r} renders empty at {rows.where(where)}"
                          for index, rows in found.templates.items())
        if self.stats.rows is None:
            what = f"{_cells(found.cells)} skipped"
        else:
            what = (f"{found.rows:,} of {self.stats.rows:,} dataset rows skipped "
                    f"({_cells(found.cells)})")
        self.skipped = SkippedRows(
            found.cells, found.rows,
            f"{what} by references_required: skip, for want of a reference image: {parts}",
        )

    def _row_places(self) -> Callable[[Sequence[int], int], str]:
        """How to name dataset records in messages: their file lines, found by reading the
        file again (only when a message needs them)."""
        dataset = self.spec.dataset
        if dataset is None or self.dataset is None:
            return lambda rows, total: ""
        lines = dataset_lines(dataset, len(self.dataset.rows),
                              self.spec.policy.max_dataset_bytes)
        name = file_name(dataset)
        return lambda rows, total: places(rows, total, lines, name)

    def _case_only(self) -> None:
        """Paths that differ only in case: one file on macOS and Windows, two elsewhere."""
        case = self._case_paths
        if case.example is None:
            return
        first, second = case.example
        self.report(
            ("output", "path"),
            f"{_cells(case.count)} write a path that differs only in case from another cell's, "
            f"e.g. {first.cell_id} ({self.describe(first.vars, first.dataset_row)}) writes "
            f"{first.output_path!r} and {second.cell_id} "
            f"({self.describe(second.vars, second.dataset_row)}) writes "
            f"{second.output_path!r}: a filesystem that ignores case (macOS, Windows) makes "
            "them one file; make the values differ by more than case",
        )

    def _bad_path(self, message: str, cell_vars: Mapping[str, str], row: int | None) -> None:
        """A cell whose rendered path cannot be written (empty or over-long name): the first
        few are reported, the rest counted (a million bad rows are not a million lines)."""
        self._bad_paths += 1
        if self._bad_paths <= MAX_MISSING_FILES:
            self.report(("output", "path"), f"{message} (for {self.describe(cell_vars, row)})")

    def _identical(self, same: _Collisions) -> None:
        assert same.example is not None
        first, second = same.example
        differ = list(same.differ)
        axes = self.spec.matrix.axes
        axis = next((name for name in differ if name in axes), None)
        if axis is not None:
            path: JsonPath = ("matrix", axis)
        elif self.dataset is not None and first.dataset_row != second.dataset_row:
            path = ("dataset", "path")
        else:
            path = ("matrix", "prompt")
        what = ", ".join(differ) or "nothing"
        self.report(
            path,
            f"{_cells(same.count)} send the same request as another cell (same prompt, "
            "aspect ratio, resolution, references and seed) and would be paid twice, e.g. "
            f"{self.describe(first.vars, first.dataset_row)} and "
            f"{self.describe(second.vars, second.dataset_row)}; they differ only in {what}: "
            "use it in the prompt (or use repeat for replicates)",
        )


@dataclass
class _Collisions:
    count: int = 0
    example: tuple[Cell, Cell] | None = None
    differ: dict[str, None] = field(default_factory=dict)  # names that differ, in order

    @classmethod
    def of(cls, found: Pairs, cells: Mapping[int, Cell]) -> _Collisions:
        pairs = [(cells[first], cells[second]) for first, second in found.pairs]
        differ = dict.fromkeys(name for pair in pairs for name in _differences(*pair))
        return cls(found.count, pairs[0] if pairs else None, differ)


@dataclass
class _EmptyRows:
    """Where one reference template rendered empty: dataset rows (first `MAX_LISTED`, and
    how many), or cells described by their variables for a spec without a dataset."""

    count: int = 0
    rows: list[int] = field(default_factory=list)
    cells: list[str] = field(default_factory=list)
    last_row: int | None = None

    def add(self, row: int | None, cell_vars: Mapping[str, str]) -> None:
        if row is None:
            self.count += 1
            if len(self.cells) < MAX_LISTED:
                self.cells.append(_describe(cell_vars, None))
        elif row != self.last_row:  # a row's cells come one after another
            self.count += 1
            self.last_row = row
            if len(self.rows) < MAX_LISTED:
                self.rows.append(row)

    def where(self, places: Callable[[Sequence[int], int], str]) -> str:
        if self.rows:
            return places(self.rows, self.count)
        more = f" ({self.count:,} in all)" if self.count > len(self.cells) else ""
        return "; ".join(f"({cell})" for cell in self.cells) + more

    def problem(
        self, template: str, places: Callable[[Sequence[int], int], str], rows: int | None
    ) -> str:
        what = _cells(self.count) if rows is None else f"{self.count:,} of {rows:,} dataset rows"
        return (
            f"{template!r} renders empty for {what}: {self.where(places)}; "
            "references_required: error refuses a cell without its reference image (it "
            "would be paid for as an image of the prompt alone): fill them in, or set "
            "references_required: skip to leave them out"
        )


@dataclass
class _EmptyReferences:
    """Every cell `references_required` refused, by template (`_EmptyRows`)."""

    cells: int = 0
    rows: int = 0
    templates: dict[int, _EmptyRows] = field(default_factory=dict)
    last_row: int | None = None

    def add(self, empty: Sequence[int], row: int | None, cell_vars: Mapping[str, str]) -> None:
        self.cells += 1
        if row is not None and row != self.last_row:
            self.rows += 1
            self.last_row = row
        for index in empty:
            self.templates.setdefault(index, _EmptyRows()).add(row, cell_vars)


@dataclass(frozen=True, slots=True)
class _Prompt:
    """A prompt text of the matrix: parsed, its name (named prompts) and the built-in
    variables of its cells (`{template}` among them when it is named)."""

    template: Template
    name: str | None
    builtins: Mapping[str, str]


@dataclass(frozen=True)
class _Recipe:
    """What a pass over the cells needs besides the spec: parsed templates, combinations."""

    prompts: Mapping[str, _Prompt]  # by text
    references: list[Template | None]
    path_template: Template
    combos: list[dict[str, str]]
    builtins: Mapping[str, str]


class ExpandedCells:
    """The cells of an expansion, expanded again on every pass instead of held: a run holds
    the cells of its chunks in flight, not ~0.6 KB per cell of the whole job.

    Every pass yields the same cells in the same order: the templates and combinations are
    the ones validation used, reference files were read and hashed once (the expansion keeps
    each rendered reference's identity), and the cells validation merged are skipped. `len()`
    is known without a pass.
    """

    def __init__(
        self, expansion: Expansion, recipe: _Recipe | None, count: int,
        dropped: frozenset[int] = frozenset(),
    ) -> None:
        self._expansion = expansion
        self._recipe = recipe
        self._count = count
        self._dropped = dropped

        self._held: list[Cell] | None = None

    def hold(self, cells: list[Cell]) -> None:
        """Serve these cells (validation's, merged ones left out) instead of expanding."""
        self._held = [replace(cell, index=i) if cell.index != i else cell
                      for i, cell in enumerate(cells)]

    def __len__(self) -> int:
        return self._count

    def input_files(self) -> tuple[InputFile, ...]:
        """The dataset and the local reference files the cells were made from, hashed
        when validation read them (a reference no cell kept is listed too)."""
        expansion = self._expansion
        dataset = expansion.dataset
        files = [InputFile("dataset", expansion.spec.dataset.path, dataset.sha256)
                 ] if dataset is not None and expansion.spec.dataset is not None else []
        files += [InputFile("reference", path, digest)
                  for path, digest in sorted(expansion.identities.files().items())]
        return tuple(files)

    def __iter__(self) -> Iterator[Cell]:
        if self._held is not None:
            return iter(self._held)
        if self._recipe is None:
            return iter(())
        candidates = self._expansion.candidates(self._recipe, self._dropped)
        return (cell for _, cell in candidates)


def _cells(count: int) -> str:
    return "1 cell" if count == 1 else f"{count} cells"


def _combinations(count: int) -> str:
    return "1 combination" if count == 1 else f"{count:,} combinations"


def _verbatim(text: str) -> Template:
    """A malformed template (already reported) as plain text, so the rest still expands."""
    return Template(text.replace("{", "{{").replace("}", "}}"), ())


def _differences(first: Cell, second: Cell) -> list[str]:
    names = [
        name for name in dict.fromkeys([*first.vars, *second.vars])
        if first.vars.get(name) != second.vars.get(name)
    ]
    if first.replicate != second.replicate:
        names.append("replicate")
    return names


def _describe(cell_vars: Mapping[str, str], where: str | None) -> str:
    parts = [] if where is None else [where]
    for name, value in cell_vars.items():
        shown = value if len(value) <= 40 else value[:37] + "..."
        parts.append(f"{name}={shown!r}")
        if len(parts) >= 6:
            parts.append("...")
            break
    return ", ".join(parts)


def _names(keys: Sequence[str]) -> str:
    return " and ".join(repr(key) for key in keys)


def _unknown_placeholder(name: str, known: set[str], what: str, *, named: bool = False) -> str:
    import difflib

    close = difflib.get_close_matches(name, sorted(known), n=1)
    hint = f"; did you mean {{{close[0]}}}?" if close else ""
    if name == "cell_id":
        return f"{{cell_id}} is only available in output.path{hint}"
    if name == TEMPLATE_NAME and not named:
        return (f"placeholder {{template}} in this {what} is the name of the cell's prompt "
                "template: name the prompts to use it (matrix.prompt as a mapping, e.g. "
                "{t1: \"...\", t2: \"...\"}), or add an axis, include key or dataset column "
                "`template`")
    if name == "prompt" and what != "output path":
        return f"a {what} cannot use {{prompt}}"
    return (
        f"placeholder {{{name}}} in this {what} is not a matrix axis, an include key, a dataset "
        f"column or a built-in ({', '.join(TEMPLATE_BUILTINS)}){hint}"
    )
