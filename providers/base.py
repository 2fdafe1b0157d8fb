"""The provider contract: a tiny async interface, everything else built on it in `flows/`.

An adapter turns a provider-neutral `ImageRequest` into one remote task and follows it to a
terminal state. It knows HTTP and its provider's wire format, nothing about specs, matrices,
Prefect or storage. Retries, throttling and fan-out live outside adapters.

    provider = registry.create("kie")                 # settings from the environment
    request = await provider.prepare(request)         # reference uploads: no task yet
    submitted = await provider.submit(request)        # remote task id, as soon as known
    while isinstance(outcome := await provider.poll(submitted), Pending):
        await asyncio.sleep(...)
    data = await provider.download(outcome.images[0])
    await provider.aclose()

`prepare` and `submit` check the provider's documented limits (`Capabilities`) before sending
anything and raise `LimitExceeded`; every other provider signal arrives as one of
`providers.errors`. `cancel` answers whether the provider confirmed the stop (a bool), so
nothing above an adapter reads a cancel as done on its own say-so.
"""

from __future__ import annotations

import ipaddress
import os
import urllib.parse
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

ReferenceDelivery = Literal["url_only", "upload"]

# The most bytes one result image may have (`ProviderSettings.max_image_bytes`): a 4K PNG of
# the model is ~30 MB (6336x2688 RGB, little compressible), so twice that is no real image.
# `providers.http.download` stops reading at this count; more is `ResultMismatch("too_large")`.
MAX_IMAGE_BYTES = 64 * 1024 * 1024


class Secret:
    """A credential that never shows itself in repr, str, logs or tracebacks."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return bool(self._value)


@dataclass(frozen=True)
class Reference:
    """A reference image: a URL the provider can fetch itself, or local content to deliver.

    `uri` is what the spec named (for the manifest); `data` is set for local files (read by
    flows through fsspec), and None for http(s) URLs passed through as they are.
    """

    uri: str
    data: bytes | None = None
    mime_type: str = "image/png"

    @property
    def is_url(self) -> bool:
        return self.data is None and self.uri.startswith(("http://", "https://"))

    @property
    def filename(self) -> str:
        name = self.uri.rstrip("/").rsplit("/", 1)[-1]
        return name or "reference"


@dataclass(frozen=True)
class ImageRequest:
    """One image, provider-neutral.

    `idempotency_key` names one create intent: random per intent (`str(uuid.uuid4())`),
    journalled before the create, and re-sent unchanged only when that same intent is sent
    again (a lost answer). Providers that support it recognise the re-send: HiAPI sends it
    as `Idempotency-Key`, Runware uses it as the taskUUID. Two intents never share a key,
    so a new attempt is a new task. Journals of older versions hold keys of the form
    `nbp-{cell}-{channel}-{n}`; adapters keep accepting them (Runware derives its taskUUID).
    """

    prompt: str
    aspect_ratio: str = "1:1"
    resolution: str = "1K"
    output_format: str = "png"
    references: tuple[Reference, ...] = ()
    seed: int | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    idempotency_key: str | None = None
    # The caller's name for what the request makes (nbp: the cell id), the same on every
    # attempt; opaque to adapters. A batch channel keys the request's line in its batch by it.
    cell_id: str | None = None


@dataclass(frozen=True)
class Submitted:
    """A remote task the provider accepted. `extra` holds provider handles (e.g. Wiro's
    socket access token) as strings, so the whole value can be journalled as JSON."""

    provider: str
    task_id: str
    extra: Mapping[str, str] = field(default_factory=dict)
    finished: Finished | None = None  # set when the provider answered synchronously
    # The remote job the task travels in when many tasks run as one (a batch's name,
    # "batches/abc"); None for a task of its own. The manifest's `task_group`.
    group: str | None = None

    def to_json(self) -> dict[str, Any]:
        found = {"provider": self.provider, "task_id": self.task_id, "extra": dict(self.extra)}
        return found | ({"group": self.group} if self.group is not None else {})

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Submitted:
        group = data.get("group")
        return cls(str(data["provider"]), str(data["task_id"]), dict(data.get("extra") or {}),
                   group=str(group) if group is not None else None)


@dataclass(frozen=True)
class Pending:
    """The task is still running; `state` is the provider's own word for where it is."""

    state: str
    progress: float | None = None


@dataclass(frozen=True)
class ResultImage:
    """An image the provider produced: a URL to download, or inline bytes."""

    url: str | None = None
    data: bytes | None = None
    mime_type: str | None = None


@dataclass(frozen=True)
class Finished:
    """The task succeeded. `cost_usd` is what the provider reported, None when it doesn't.

    `queue_s` and `generation_s` are the task's own times as the provider reports them
    (`Capabilities.task_times`): seconds it waited before it ran, seconds it ran. None where
    the provider reports none; what nbp spent sending, polling and downloading is in neither.
    """

    images: tuple[ResultImage, ...]
    cost_usd: float | None = None
    state: str = "success"
    # Token counts the provider reported (Gemini's usageMetadata): "image", "thinking", ...
    usage: Mapping[str, int] = field(default_factory=dict)
    queue_s: float | None = None
    generation_s: float | None = None
    # The service tier that served the request as the provider reports it (Gemini's
    # `x-gemini-service-tier`: "standard", "flex", "priority"); None where it has none.
    service_tier: str | None = None


@dataclass(frozen=True)
class BatchLimits:
    """What one batch of a batch provider (`BatchProvider`) may hold, and how long it takes:
    the engine closes a group of cells when the next one would pass a limit.

        BatchLimits(max_requests=500, max_input_bytes=3 * 2**29, max_result_bytes=2**30,
                    expected_result_bytes={"1K": 3 * 2**20, "2K": 8 * 2**20},
                    turnaround_s=24 * 3600.0)
    """

    max_requests: int                 # requests (cells) per batch
    max_input_bytes: int              # the batch's input file, references inline
    max_result_bytes: int             # its results file, as the expected sizes add up
    expected_result_bytes: Mapping[str, int]  # resolution -> one result's bytes on the wire
    turnaround_s: float               # the provider's target turnaround of a batch

    def result_bytes(self, resolution: str) -> int:
        """One result's expected bytes; the largest known for an unknown resolution."""
        found = self.expected_result_bytes
        return found.get(resolution, max(found.values(), default=0))


@dataclass(frozen=True)
class Capabilities:
    """A provider's documented limits and defaults; validation and planning read these
    before anything is sent. Each adapter cites where its numbers are documented."""

    aspect_ratios: tuple[str, ...]
    resolutions: tuple[str, ...]
    output_formats: tuple[str, ...]
    max_prompt_chars: int
    max_references: int
    reference_delivery: ReferenceDelivery
    min_prompt_chars: int = 1
    idempotent_submit: bool = False      # a re-sent create returns the original task
    recoverable_submit: bool = False     # a lost create answer can be found again (`recover`)
    can_cancel: bool = False
    prices_usd: Mapping[str, float] = field(default_factory=dict)  # resolution -> USD / image
    price_is_published: bool = True
    price_per_reference_usd: float = 0.0  # charged on top, per reference image sent
    # What a create holds over its price until costs are seen, as a factor (1: the provider
    # bills a flat price per image). Above 1 where the cost comes from usage tokens besides
    # the image's (Gemini: input, thinking and text tokens): the budget and the spend window
    # hold the price times this, then the largest cost/price ratio seen
    # (`flows.engine.markup`).
    initial_markup: float = 1.0
    default_rate: str | None = None      # "20/10s": creates per window, None when undocumented
    default_max_in_flight: int = 50
    poll_interval_s: float = 3.0         # documented polling guidance, first interval
    # A batch provider (`BatchProvider`): what one batch holds and takes, else None.
    batch: BatchLimits | None = None
    # `submit` answers with the image itself (`Submitted.finished`, Gemini's generateContent):
    # there is no remote task to poll, and an answer that was not recorded is gone.
    synchronous: bool = False
    option_schema: Mapping[str, Any] = field(default_factory=dict)  # JSON Schema of options
    # Options whose value changes the price of an image (Gemini's `service_tier`): option ->
    # value -> factor on `prices_usd`. Such a factor is the provider's published discount or
    # surcharge, not a price published for this model: the plan marks what it prices with
    # one as an estimate.
    price_factors: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    # Options whose value changes how long an image takes (Gemini's `service_tier` flex,
    # "target 1-15 min"): option -> value -> (least, most) seconds per image, as documented.
    # The plan times such cells with the least and says how long the most would take.
    latency_ranges_s: Mapping[str, Mapping[str, tuple[float, float]]] = field(
        default_factory=dict)
    # The provider documents a seed for this model: the create carries `ImageRequest.seed`
    # (`sent_seed`). False: the documentation is silent or says it is ignored; nothing is sent.
    seed: bool = False
    max_seed: int = 2**63 - 1            # the largest seed the provider takes (from 0)
    # The status answer reports when the task waited and ran (`Finished.queue_s`,
    # `generation_s`); False: it reports neither.
    task_times: bool = False
    # Model ids a request may ask for in `options["model"]` (a `model` matrix axis), the
    # default first; empty: the provider runs one model and takes no model option.
    models: tuple[str, ...] = ()
    env_vars: tuple[str, ...] = ()       # credentials read from the environment
    optional_env_vars: tuple[str, ...] = ()
    # A documented variable another documented one may stand in for, when unset (Gemini:
    # GOOGLE_API_KEY for GEMINI_API_KEY): what "missing" means for the provider's own account.
    env_alternatives: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


def sent_seed(capabilities: Capabilities, request: ImageRequest) -> int | None:
    """The seed a create of `request` carries: the request's, or where the provider documents
    a seed its `options["seed"]` (a provider option of that name); None where it documents
    none (`Capabilities.seed`). The engine's `seed_sent` is this, not None."""
    if not capabilities.seed:
        return None
    if request.seed is not None:
        return request.seed
    option = request.options.get("seed")
    return option if isinstance(option, int) and not isinstance(option, bool) else None


@dataclass(frozen=True)
class ProviderSettings:
    """Where and as whom to talk to a provider. Secrets are `Secret`s: never printed."""

    base_url: str
    credentials: Mapping[str, Secret] = field(default_factory=dict)
    extra_urls: Mapping[str, str] = field(default_factory=dict)  # e.g. Kie's upload host
    timeout_s: float = 60.0
    max_image_bytes: int = MAX_IMAGE_BYTES  # a bigger result image is `ResultMismatch`
    # Origins ("https://api.kie.ai:443") that may receive credentials; a request carrying
    # them anywhere else is refused before it is sent. None: no restriction (settings built
    # by hand); `settings_from_env` fills it in (see `credential_origins`).
    credential_origins: frozenset[str] | None = None

    def credential(self, name: str) -> str | None:
        secret = self.credentials.get(name)
        return secret.get() if secret else None


@runtime_checkable
class Provider(Protocol):
    """What every adapter implements. See the module docstring for the life of a task."""

    name: str
    capabilities: Capabilities

    async def prepare(self, request: ImageRequest) -> ImageRequest:
        """Everything a create needs that is not the create itself: reference uploads, or a
        batch channel's placement of the request in a group. Called once per create intent,
        before its create is journalled; whatever it raises, no task was created. Returns
        the request to `submit` (e.g. local references replaced by the URLs or ids of their
        uploads; a batch's member keyed by its group: the key journalled with the create);
        unchanged where nothing is needed."""
        ...

    async def submit(self, request: ImageRequest) -> Submitted:
        """Create the remote task; return as soon as the provider names it. A prepared
        request costs exactly one request to the provider: the create."""
        ...

    async def poll(self, submitted: Submitted) -> Pending | Finished:
        """Where the task is; raises `TaskFailed` when it ended in failure."""
        ...

    async def recover(self, request: ImageRequest) -> Submitted | None:
        """Find the task an earlier `submit` of this request created when its answer was
        lost; None when there is none or the protocol cannot tell."""
        ...

    async def download(self, image: ResultImage) -> bytes:
        """The bytes of a result image (inline data or an HTTP download)."""
        ...

    async def cancel(self, submitted: Submitted) -> bool:
        """Ask the provider to stop the remote task. True only when the provider confirms
        it is cancelled (its own answer, or a status asked right after, says so); False
        when there is no cancel API, the provider refused, or the task is in any other
        state: the task may still run and be billed, so keep following it. Never raises
        for a refusal; raises `providers.errors` only for transport or auth trouble (a
        caller treats any exception as "not confirmed")."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...


def env_base_url(provider: str, default: str, environ: Mapping[str, str] | None = None) -> str:
    """`NBP_<PROVIDER>_BASE_URL` replaces the documented base URL exactly when set (`provider`
    is an adapter's `env_name`: two adapters of one host share a variable, e.g. gemini and
    gemini-batch both read `NBP_GEMINI_BASE_URL`)."""
    env = os.environ if environ is None else environ
    return env.get(url_variable(provider)) or default


def url_variable(provider: str, key: str = "") -> str:
    """The variable that names a provider's URL: `NBP_<PROVIDER>_BASE_URL`, or
    `NBP_<PROVIDER>_<KEY>_BASE_URL` for one of its `extra_url_defaults` (Kie's "upload")."""
    middle = f"{key.upper()}_" if key else ""
    return f"NBP_{provider.upper()}_{middle}BASE_URL"


# -- where credentials may go -----------------------------------------------------------------
# One rule (`may_receive_credentials`) decides which origins may receive a provider's
# credentials, for spec validation (a spec's `base_urls`) and for the adapters alike
# (`HttpAdapter.settings_from_env` -> the HTTP client's `CredentialGuard`), so a base URL that
# validates is one the adapter sends the key to, and the reverse. Allowed: the adapter's
# documented origins, the origins the environment names (`NBP_<PROVIDER>_BASE_URL`,
# `NBP_<PROVIDER>_<KEY>_BASE_URL`: the user's own choice) and loopback (emulators, local
# proxies). Origins, not hosts: `http://api.kie.ai:8080` is another server than
# `https://api.kie.ai`, and a key sent in clear text can be read on the way. The rule reads
# `ProviderFacts`, plain values, so deciding needs no HTTP client.

_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class ProviderFacts:
    """A provider's documented facts as plain values, loaded without an HTTP client: its
    limits, prices and credential variables (`capabilities`), default model, documented URLs
    and the variables that replace them. A built-in provider declares them in
    `providers/<name>_facts.py` and its adapter class is built from them; an outside
    adapter's are read from its class (`ProviderFacts.of`).

        facts = registry.facts("kie")      # imports providers.kie_facts, no client
        facts.capabilities.max_references  # 8
        facts.url_variables                # ("NBP_KIE_BASE_URL", "NBP_KIE_UPLOAD_BASE_URL")
        may_receive_credentials(facts, "http://api.kie.ai:8080", {})   # False
    """

    name: str                           # the registry name, for messages
    capabilities: Capabilities
    model: str = ""                     # the model id as this provider names it (the default)
    base_url: str = ""                  # the documented base URL
    # Other documented hosts by key (Kie's "upload"), each replaced by its own variable.
    extra_urls: Mapping[str, str] = field(default_factory=dict)
    # The <PROVIDER> of its `NBP_<PROVIDER>_..._BASE_URL` variables when it is not `name`
    # (adapters of one host share them: gemini-batch reads NBP_GEMINI_BASE_URL).
    env_name: str = ""

    def __post_init__(self) -> None:
        if not self.env_name:
            object.__setattr__(self, "env_name", self.name)

    @classmethod
    def of(cls, adapter: Any) -> ProviderFacts:
        """The facts of an adapter class, from its attributes (`name`, `capabilities`,
        `model`, `default_base_url`, `extra_url_defaults`, `env_name`); a class without URLs
        has no documented origin."""
        return cls(
            name=str(getattr(adapter, "name", "")),
            capabilities=adapter.capabilities,
            model=str(getattr(adapter, "model", None) or ""),
            base_url=str(getattr(adapter, "default_base_url", None) or ""),
            extra_urls={str(k): str(v) for k, v in
                        dict(getattr(adapter, "extra_url_defaults", None) or {}).items()},
            env_name=str(getattr(adapter, "env_name", None) or ""),
        )

    @property
    def documented_urls(self) -> tuple[str, ...]:
        """The base URL, then each extra URL."""
        return tuple(u for u in (self.base_url, *self.extra_urls.values()) if u)

    @property
    def url_keys(self) -> tuple[str, ...]:
        return tuple(self.extra_urls)

    @property
    def base_url_variable(self) -> str:
        """`NBP_<PROVIDER>_BASE_URL`: the variable that replaces the documented base URL."""
        return url_variable(self.env_name)

    @property
    def url_variables(self) -> tuple[str, ...]:
        """The variables through which the environment names this provider's URLs: the base
        URL's first (the one to tell a user about), then each extra URL's."""
        return tuple(url_variable(self.env_name, key) for key in ("", *self.url_keys))

    @property
    def documented_origins(self) -> frozenset[str]:
        return frozenset(url_origin(u) for u in self.documented_urls)


def url_origin(url: str) -> str:
    """`scheme://host:port` of a URL, lowercase, with the scheme's default port filled in:
    two URLs share an origin exactly when their origins are equal strings. A port that is
    not a number gives an origin no real URL has."""
    parts = urllib.parse.urlsplit(url.strip())
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    host = f"[{host}]" if ":" in host else host
    try:
        port = parts.port
    except ValueError:
        return f"{scheme}://{host}:?"
    return f"{scheme}://{host}:{_DEFAULT_PORTS.get(scheme, 0) if port is None else port}"


def is_loopback(url: str) -> bool:
    """True for http(s) URLs on this machine: `localhost`, 127.0.0.0/8 and ::1. Credentials
    sent there do not leave the machine. Not `*.localhost`: the system resolver may ask the
    network for such a name, and an answer from there would get the key in clear text."""
    parts = urllib.parse.urlsplit(url.strip())
    host = (parts.hostname or "").lower().rstrip(".")
    if parts.scheme.lower() not in _DEFAULT_PORTS or not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def environment_urls(facts: ProviderFacts, environ: Mapping[str, str] | None = None) -> list[str]:
    """The URLs the environment names for a provider (`ProviderFacts.url_variables`)."""
    env = os.environ if environ is None else environ
    return [url for name in facts.url_variables if (url := env.get(name))]


def may_receive_credentials(
    facts: ProviderFacts, url: str, environ: Mapping[str, str] | None = None
) -> bool:
    """Whether `url` may be sent the provider's real credentials: loopback, or an origin that
    is documented or named by the environment (`environ`, default `os.environ`). The one
    rule: spec validation asks it of `base_urls`, the adapters build their
    `credential_origins` from it.

        may_receive_credentials(kie, "https://api.kie.ai/")          # True: documented
        may_receive_credentials(kie, "http://127.0.0.1:8000/kie")    # True: loopback
        may_receive_credentials(kie, "http://api.kie.ai:8080")       # False: another origin
        may_receive_credentials(kie, "https://proxy.example", {"NBP_KIE_BASE_URL":
                                "https://proxy.example/kie"})        # True: the user's choice
    """
    if is_loopback(url):
        return True
    named = {url_origin(u) for u in environment_urls(facts, environ)}
    return url_origin(url) in facts.documented_origins | named


def credential_origins(
    facts: ProviderFacts, environ: Mapping[str, str] | None = None, *, urls: Iterable[str] = ()
) -> frozenset[str]:
    """The origins an adapter's HTTP client may send credentials to: its documented ones,
    the environment's, and those of `urls` (the URLs it was given, e.g. a spec's
    `base_urls`) that `may_receive_credentials` allows. Loopback is allowed besides, by the
    client's guard (`providers.http.CredentialGuard`), whatever the origin set."""
    given = [*facts.documented_urls, *environment_urls(facts, environ), *urls]
    return frozenset(url_origin(u) for u in given if may_receive_credentials(facts, u, environ))


# -- batch providers ---------------------------------------------------------------------------

BatchState = Literal["pending", "running", "succeeded", "failed", "cancelled", "expired"]
BATCH_DONE: frozenset[str] = frozenset({"succeeded", "failed", "cancelled", "expired"})


@dataclass(frozen=True)
class BatchJob:
    """One batch at the provider, as its API reports it (states mapped to `BatchState`)."""

    name: str                          # the provider's id, e.g. "batches/abc123"
    display_name: str                  # chosen by nbp: unique to the job and its cells
    state: BatchState
    created_at: float | None = None    # epoch seconds
    error: str | None = None           # why it failed, expired or was cancelled
    results: str | None = None         # where its results are (e.g. "files/xyz"), once done
    failed_requests: int | None = None  # the requests the provider counts failed, if it says

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "display_name": self.display_name, "state": self.state,
                "created_at": self.created_at, "error": self.error, "results": self.results,
                "failed_requests": self.failed_requests}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> BatchJob:
        return cls(str(data["name"]), str(data["display_name"]), data["state"],
                   data.get("created_at"), data.get("error"), data.get("results"),
                   data.get("failed_requests"))


@dataclass(frozen=True)
class BatchResult:
    """One request's outcome in a finished batch: `finished` (its image inline), or `error`
    (a `providers.errors.ProviderError`: `ContentRejected` for a safety refusal, else
    `TaskFailed`)."""

    key: str                           # the key nbp gave the request: the cell id
    finished: Finished | None = None
    error: Exception | None = None
    # 0-based line of the results file (results keep request order): what identifies a
    # result whose key could not be read (a refused, oversized line), else None.
    line: int | None = None
    # the line is the provider's error for the request (what its batch counts as failed),
    # not a response that brought no image
    failed: bool = False


@runtime_checkable
class BatchProvider(Protocol):
    """A provider that takes many requests as one job with hours of turnaround (Gemini's
    Batch API). The engine groups cells, journals the display name before `create_batch`,
    and after a lost answer or a kill finds the batch again with `find_batch`."""

    name: str
    capabilities: Capabilities

    async def create_batch(
        self, display_name: str, requests: Sequence[tuple[str, ImageRequest]]
    ) -> BatchJob:
        """Send `(key, request)` pairs as one batch (not idempotent: never call it twice for
        the same display name without `find_batch` first)."""
        ...

    async def find_batch(self, display_name: str) -> BatchJob | None:
        """The batch with this display name, by listing; None when there is none."""
        ...

    async def get_batch(self, name: str) -> BatchJob:
        """Where the batch is now."""
        ...

    def batch_results(self, job: BatchJob) -> AsyncIterator[BatchResult]:
        """The results of a succeeded batch, one request at a time, streamed: never the
        whole results file in memory."""
        ...

    async def cancel_batch(self, name: str) -> bool:
        """Ask the provider to cancel the batch: True only when it then reports the batch
        cancelled, False otherwise (already over, refused, still cancelling)."""
        ...

    async def aclose(self) -> None:
        ...
