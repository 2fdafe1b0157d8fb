"""`HttpAdapter`: what every built-in adapter shares, so each adapter module holds only its
provider's wire format and its error mapping.

A built-in adapter's facts (limits, prices, default model, documented URLs, credential
variables, option schema) are declared in `providers/<name>_facts.py` as a `ProviderFacts`,
which loads without an HTTP client; the adapter class takes `name`, `model`, `capabilities`,
`default_base_url` (and `extra_url_defaults`, `env_name` where it has them) from there, and
implements `submit` and `poll` (and `prepare` when a create needs uploads first, `cancel` when
the provider can stop a task).

Every adapter module has the same sections, in this order, marked by these comment lines
(`SECTIONS`; tests/providers/test_layout.py holds every built-in adapter to it): module
docstring (wire format in one paragraph, sources), imports, documented constants of the wire
format, the adapter class (prepare, submit, poll, recover, download, cancel, then its
helpers), wire format (request and response mapping), errors (the one place mapping HTTP
statuses and body codes to `providers.errors`, via `http`'s ladder).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any, ClassVar

import httpx

from nbp.providers import http
from nbp.providers.base import (
    Capabilities,
    Finished,
    ImageRequest,
    Pending,
    ProviderFacts,
    ProviderSettings,
    ResultImage,
    Secret,
    Submitted,
    credential_origins,
    env_base_url,
    url_variable,
)
from nbp.providers.errors import AuthError, LimitExceeded, ResultMismatch
from nbp.providers.limits import limit_problems
from nbp.providers.options import check_options

SECTIONS: tuple[str, ...] = tuple(
    f"# -- {title} ".ljust(94, "-")
    for title in ("documented constants", "adapter", "wire format", "errors")
)


class HttpAdapter:
    """Base class of the built-in adapters (see `providers.base.Provider` for the contract)."""

    name: ClassVar[str]
    model: ClassVar[str]                  # the model id as this provider names it
    capabilities: ClassVar[Capabilities]
    default_base_url: ClassVar[str]
    extra_url_defaults: ClassVar[Mapping[str, str]] = {}  # key -> documented URL
    # The <NAME> of `NBP_<NAME>_BASE_URL` when it is not `name` (gemini-batch: "gemini").
    env_name: ClassVar[str | None] = None
    # Request headers that carry credentials beyond `http.CREDENTIAL_HEADERS`: never sent
    # across a redirect to another origin, nor to an origin outside the settings'.
    secret_headers: ClassVar[tuple[str, ...]] = ()

    def __init__(self, settings: ProviderSettings) -> None:
        self.settings = settings
        self.base_url = settings.base_url.rstrip("/")
        self.client = http.make_client(
            settings.timeout_s, secret_headers=self.secret_headers,
            credential_origins=settings.credential_origins,
        )

    @classmethod
    def settings_from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        base_url: str | None = None,
        extra_urls: Mapping[str, str] | None = None,
    ) -> ProviderSettings:
        """Documented base URLs unless `NBP_<PROVIDER>_BASE_URL` (or an argument) replaces
        them; credentials from the env vars named in `capabilities`.

        Credentials go only where `providers.base.may_receive_credentials` allows (the rule
        spec validation applies to `base_urls` too): a URL given as an argument elsewhere is
        used, but a request carrying credentials there is refused with `AuthError` before
        it is sent."""
        env = os.environ if environ is None else environ
        facts = ProviderFacts.of(cls)
        names = (*cls.capabilities.env_vars, *cls.capabilities.optional_env_vars)
        credentials = {n: Secret(env[n]) for n in names if env.get(n)}
        urls = {
            key: env.get(url_variable(facts.env_name, key)) or default
            for key, default in cls.extra_url_defaults.items()
        }
        urls.update(extra_urls or {})
        given = [u for u in (base_url, *(extra_urls or {}).values()) if u]
        return ProviderSettings(
            base_url=base_url or env_base_url(facts.env_name, cls.default_base_url, env),
            credentials=credentials,
            extra_urls=urls,
            credential_origins=credential_origins(facts, env, urls=given),
        )

    def require_credential(self, env_var: str) -> str:
        """A credential's value, or an `AuthError` that names the variable (not the value)."""
        value = self.settings.credential(env_var)
        if not value:
            raise AuthError(f"{self.name}: set {env_var} in the environment")
        return value

    def check_limits(self, request: ImageRequest) -> None:
        """Raise `LimitExceeded` for anything the provider documents it would reject."""
        for problem in limit_problems(self.name, self.capabilities, request):
            raise LimitExceeded(problem)

    def checked_options(self, request: ImageRequest) -> Mapping[str, Any]:
        """The request's options if they fit `capabilities.option_schema`, else
        `LimitExceeded` naming every problem (`providers.options`, as spec loading does)."""
        return check_options(self.name, self.capabilities.option_schema, request.options)

    def url(self, path: str) -> str:
        return f"{self.base_url}{path}"

    async def prepare(self, request: ImageRequest) -> ImageRequest:
        """Nothing to do before the create by default (references travel inside it)."""
        return request

    async def submit(self, request: ImageRequest) -> Submitted:
        raise NotImplementedError

    async def poll(self, submitted: Submitted) -> Pending | Finished:
        raise NotImplementedError

    async def recover(self, request: ImageRequest) -> Submitted | None:
        return None

    async def download(self, image: ResultImage) -> bytes:
        """Inline bytes, a `data:` URL (decoded) or an HTTP download; an image larger than
        `settings.max_image_bytes` is `ResultMismatch` with code `too_large`."""
        limit = self.settings.max_image_bytes
        if image.data is not None:
            if len(image.data) > limit:
                raise ResultMismatch(
                    f"{self.name}: the inline image has {len(image.data)} bytes, more than "
                    f"the {limit} allowed", code=http.TOO_LARGE,
                )
            return image.data
        if image.url is None:
            raise ValueError("result image has neither data nor url")
        if image.url.startswith("data:"):
            return http.inline_image(image.url, max_bytes=limit)
        return await http.download(self.client, image.url, max_bytes=limit)

    async def cancel(self, submitted: Submitted) -> bool:
        """No cancel API by default: nothing was stopped, so nothing is confirmed."""
        return False

    async def aclose(self) -> None:
        await self.client.aclose()

    async def __aenter__(self) -> Any:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


# No reseller documents a moderation code. What reaches us is the model's own refusal reason
# (Gemini finishReason IMAGE_SAFETY, PROHIBITED_CONTENT, BLOCKLIST, SPII, ...: protocols.md
# §6.1) or the reseller's wording ("content policy", "flagged by moderation"), inside a failure
# message. This is a heuristic, kept in one place so every adapter classifies alike.
CONTENT_REJECTION_PATTERN = re.compile(
    r"safety|prohibited|blocklist|blocked|polic(?:y|ies)|moderat|flagged|violat|nsfw"
    r"|sensitive|inappropriate|\bspii\b",
    re.IGNORECASE,
)


def looks_like_content_rejection(*texts: object) -> bool:
    """True when a failure's code or message reads like a content/policy refusal."""
    return any(CONTENT_REJECTION_PATTERN.search(str(t)) for t in texts if t)


def status_message(response: httpx.Response, body: Any, *keys: str) -> str:
    """A readable error message from the first present body key, else the HTTP status."""
    if isinstance(body, Mapping):
        for key in keys:
            value = body.get(key)
            if value:
                return str(value)
    return f"HTTP {response.status_code}"
