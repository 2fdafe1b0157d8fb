"""Values that cross module boundaries inside `flows/`: the validated job spec and its cells.

`flows.spec.loader` builds a `JobSpec` from YAML (after validation); `flows.spec.cells`
expands it into `Cell`s; the runner, the plan and the manifest read only these.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

from nbp.flows.spec.inputs import InputPolicy
from nbp.flows.spec.policies import DEFAULT_ROUTING
from nbp.flows.spec.rate import SpendLimit

DEFAULT_OUTPUT_PATH = "{cell_id}.{ext}"
NO_KEY: Mapping[str, Any] = MappingProxyType({})  # a cell without a dataset key
DEFAULT_RETRIES = 2
# A model id that means "the provider's default model id": the cell is not pinned to a model
# (`Cell.model` None), so it is the same cell as one without a model value.
DEFAULT_MODEL = "default"


@dataclass(frozen=True)
class ProviderLimits:
    """Throttle settings of one provider account; None means the documented default.
    `spend` is the provider's, all of its accounts together (a billing account's cap)."""

    rate: str | None = None            # "20/10s": creates per window
    max_in_flight: int | None = None   # remote tasks not yet terminal
    poll_interval_s: float | None = None
    spend: SpendLimit | None = None    # money per rolling window; None: no such limit


@dataclass(frozen=True)
class GallerySpec:
    """`output.gallery`: the axes of the gallery's rows and columns, outermost first; an
    empty side keeps the gallery's default axes (`outputs.gallery.Layout`)."""

    rows: tuple[str, ...] = ()
    columns: tuple[str, ...] = ()


@dataclass(frozen=True)
class OutputSpec:
    target: str                         # fsspec URL or local path (resolved, templated)
    format: str = "png"
    path: str = DEFAULT_OUTPUT_PATH      # template relative to target
    storage_options: Mapping[str, Any] = field(default_factory=dict)
    gallery: GallerySpec | None = None   # None: the default layout


@dataclass(frozen=True)
class MatrixSpec:
    """The matrix with every value as template text. `axes` always has `prompt`,
    `aspect_ratio` and `resolution` (defaults filled in), then the extra axes in spec order.

    `models`: `matrix.model` written per provider (provider -> its model ids as written,
    `DEFAULT_MODEL` among them): each provider's cells cross its own ids only, a provider it
    leaves out has `(DEFAULT_MODEL,)`. `axes["model"]` then holds every id once (the names),
    and `axes["provider"]` the mapping's providers when the spec has no provider axis.
    `templates`: `matrix.prompt` written as a mapping, name -> text (`axes["prompt"]` holds
    the texts). Both empty when written as lists.
    """

    axes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    include: tuple[Mapping[str, str], ...] = ()
    exclude: tuple[Mapping[str, str], ...] = ()
    models: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    templates: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class DatasetSpec:
    path: str                           # resolved: absolute local path or fsspec URL
    format: str | None = None           # csv | parquet | jsonl; None: from the extension
    storage_options: Mapping[str, Any] = field(default_factory=dict)
    key: tuple[str, ...] = ()           # the columns that identify a row (a product)
    duplicates: str = "fail"            # a repeated key: fail, or keep the first or last row


@dataclass(frozen=True)
class Account:
    """One account of a provider: which environment variables hold its credentials.

    `label` names it in the manifest, the journal and messages (a variable name, never a
    key); `variables` maps the provider's documented variables to this account's (those
    not named keep their documented name)."""

    label: str
    variables: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class JobSpec:
    """A validated job spec. Paths are already resolved against the spec file's folder."""

    name: str
    # every provider a cell may run on: `routed`, then those only a matrix value names
    providers: tuple[str, ...]
    output: OutputSpec
    source: str = "<memory>"             # where the spec came from (for messages)
    repeat: int = 1
    retries: int = DEFAULT_RETRIES
    fail_fast: bool = False
    max_usd: float | None = None        # one run of the job (its shards included)
    max_total_usd: float | None = None  # everything spent on the target, across runs
    seed: int | None = None
    routing: str = DEFAULT_ROUTING       # a name in flows.spec.policies.POLICIES
    deadline_s: float | None = None      # cheapest routing: finish within this, from the start
    accounts: Mapping[str, tuple[Account, ...]] = field(default_factory=dict)  # as listed
    limits: Mapping[str, ProviderLimits] = field(default_factory=dict)
    options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    # provider -> resolution -> USD per image
    prices: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    base_urls: Mapping[str, str] = field(default_factory=dict)
    raw: Mapping[str, Any] = field(default_factory=dict)  # the parsed YAML, for expansion
    credentials: Mapping[str, str] = field(default_factory=dict)  # ENV_VAR -> Secret block name
    matrix: MatrixSpec = field(default_factory=MatrixSpec)
    dataset: DatasetSpec | None = None
    references: tuple[str, ...] = ()     # templates, as written
    # `references_required`: "error" (a cell whose references render empty makes the spec
    # invalid), "skip" (such a cell is left out) or None (a cell may have none)
    references_required: str | None = None
    base_dir: str = "."                  # the spec file's folder: relative paths start here
    policy: InputPolicy = field(default_factory=InputPolicy)  # what it was validated under
    text: str = ""                       # the spec as written (for the run's record)
    # `provider:` in spec order (fallback order; first is primary): where the cells without a
    # pinned provider go. None: the same as `providers` (specs built in code).
    listed: tuple[str, ...] | None = None

    @property
    def provider(self) -> str:
        return self.routed[0] if self.routed else self.providers[0]

    @property
    def routed(self) -> tuple[str, ...]:
        """The providers a cell without a pinned provider may run on (may be empty when a
        `provider` matrix axis pins every cell)."""
        return self.providers if self.listed is None else self.listed


@dataclass(frozen=True, slots=True)
class Cell:
    """One image request of a job: the unit of submission, journal, manifest and gallery.

    `cell_id` is a stable hash (see `flows.spec.cells.cell_id`) of everything that changes the
    image: the same cell has the same id in every run and on every machine.
    """

    cell_id: str
    index: int                          # position in the expansion (for stable ordering)
    prompt: str
    aspect_ratio: str
    resolution: str
    output_format: str
    references: tuple[str, ...]          # resolved URIs (local paths, fsspec or http URLs)
    vars: Mapping[str, str]              # template variables: axes + dataset columns
    replicate: int
    output_path: str                    # relative to the target, sanitised
    seed: int | None = None
    dataset_row: int | None = None      # the row's 0-based number in the dataset file
    # The dataset key of the cell's row (`dataset.key`), column -> value typed as in the file
    # (int, float, bool, else text; None: empty): the manifest's `key_<column>` columns.
    key: Mapping[str, Any] = field(default_factory=lambda: NO_KEY)
    # A `provider` / `model` matrix value pins the cell: only that provider's channels run
    # it (routing and fallback never move it), with that model id. None: not pinned.
    provider: str | None = None
    model: str | None = None
    # The name of the cell's prompt template (`matrix.prompt` written as a mapping name ->
    # text); the manifest's `template` column. None: prompts written as a list.
    template: str | None = None
    # The id the spec gives this cell when a target makes it otherwise (a redo's new seed,
    # a reference photo that changed behind its URL: `flows.engine.redo`); None: `cell_id`.
    spec_id: str | None = None
    # The same request's cell before its reference fingerprint was folded into its id: its
    # image is this cell's, taken over unpaid (a target made before fingerprints). None: none.
    adopts: str | None = None

    @property
    def spec_cell_id(self) -> str:
        """The id of the spec's cell this cell makes (the manifest's `spec_cell_id`)."""
        return self.spec_id or self.cell_id


class CellSource(Protocol):
    """Cells that can be counted and read, in order, as many times as needed.

    A job's cells are expanded again on each pass (`flows.spec.cells.ExpandedCells`) rather
    than held: 100,000 cells are ~60 MB as objects. A list is a `CellSource` too (tests).
    """

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[Cell]: ...


@dataclass(frozen=True)
class SkippedRows:
    """What `references_required: skip` left out: cells (and the dataset rows they come
    from) whose references render empty. `message` says how many, why and where, for
    `nbp validate` and `nbp plan` to print."""

    cells: int
    rows: int                          # dataset rows (0 for a spec without a dataset)
    message: str


@dataclass(frozen=True)
class InputFile:
    """A file the cells were made from, for the run's record: the dataset (as read, local
    or a URL) or a local reference file."""

    role: str       # "dataset" | "reference"
    path: str       # resolved: absolute local path or URL
    sha256: str     # of its content


@dataclass(frozen=True)
class Job:
    """A validated spec and every cell it expands to (`flows.spec.loader.load_job`).

    `notes` are located remarks that do not make the spec invalid, as `file:line:col: path:
    note: ...` (e.g. dataset rows `dataset.duplicates` dropped): `nbp validate` shows them."""

    spec: JobSpec
    cells: CellSource
    skipped: SkippedRows | None = None  # cells left out by `references_required: skip`
    notes: tuple[str, ...] = ()
    inputs: tuple[InputFile, ...] = ()  # the dataset and local references, hashed
