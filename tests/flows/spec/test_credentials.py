"""A spec names only its providers' own credentials (`accounts`, `credentials`), and points
a provider only where its key may go (`base_urls`): issue 20, item 1. Every refusal is a
located problem; validation and the adapters answer "may this URL get the key?" alike."""

from __future__ import annotations

import asyncio
import textwrap
from collections.abc import Mapping
from pathlib import Path

import httpx
import pytest

from nbp.flows.spec.channels import Channel
from nbp.flows.spec.credentials import block_name, did_you_mean, extends, owner
from nbp.flows.spec.loader import Problem, validate_spec_file
from nbp.providers import http, registry
from nbp.providers.errors import AuthError

HEAD = """\
version: 1
name: creds
matrix: {prompt: [a fig]}
"""
SECRET_VALUE = "aws-secret-value-never-shown"


def write(folder: Path, text: str) -> str:
    path = folder / "job.yaml"
    path.write_text(HEAD + textwrap.dedent(text))
    return str(path)


def problems_of(tmp_path: Path, text: str) -> list[Problem]:
    return validate_spec_file(write(tmp_path, text))


def at(problems: list[Problem], path: str) -> Problem:
    found = [p for p in problems if p.path == path]
    assert len(found) == 1, [str(p) for p in problems]
    return found[0]


# -- the rule ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("documented", "variable", "own"), [
    pytest.param("KIE_API_KEY", "KIE_API_KEY", True, id="documented"),
    pytest.param("KIE_API_KEY", "KIE_API_KEY_2", True, id="numbered"),
    pytest.param("KIE_API_KEY", "KIE_API_KEY_TEAM", True, id="named"),
    pytest.param("KIE_API_KEY", "KIE_API_KEY_TEAM_2", True, id="long-suffix"),
    pytest.param("KIE_API_KEY", "KIE_API_KEY_", False, id="empty-suffix"),
    pytest.param("KIE_API_KEY", "KIE_API_KEY2", False, id="no-underscore"),
    pytest.param("KIE_API_KEY", "KIE_API_KEYS", False, id="longer-word"),
    pytest.param("KIE_API_KEY", "MY_KIE_API_KEY", False, id="prefixed"),
    pytest.param("KIE_API_KEY", "AWS_SECRET_ACCESS_KEY", False, id="foreign"),
    pytest.param("WIRO_API_KEY", "WIRO_API_SECRET_B", False, id="another-slot"),
])
def test_a_variable_is_the_documented_one_or_extends_it(
    documented: str, variable: str, own: bool
) -> None:
    assert extends(documented, variable) is own


def test_the_owner_is_the_longest_documented_name() -> None:
    assert owner(("WIRO_API_KEY", "WIRO_API_SECRET"), "WIRO_API_SECRET_B") == "WIRO_API_SECRET"
    assert owner(("X_KEY", "X_KEY_SECRET"), "X_KEY_SECRET_2") == "X_KEY_SECRET"
    assert owner(("KIE_API_KEY",), "AWS_SECRET_ACCESS_KEY") is None


def test_a_block_is_named_after_its_variable() -> None:
    assert block_name("KIE_API_KEY") == "kie-api-key"
    assert block_name("KIE_API_KEY_2") == "kie-api-key-2"


@pytest.mark.parametrize(("variable", "hint"), [
    ("KIE_KEY_2", " did you mean KIE_API_KEY_2?"),
    ("KIE_API_KEY2", " did you mean KIE_API_KEY_2?"),
    ("KEI_API_KEY", " did you mean KIE_API_KEY?"),
    ("AWS_SECRET_ACCESS_KEY", ""),
])
def test_did_you_mean(variable: str, hint: str) -> None:
    assert did_you_mean(("KIE_API_KEY",), variable) == hint


# -- accounts ---------------------------------------------------------------------------------


def test_a_foreign_variable_in_the_list_form_is_refused(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, """\
        provider: kie
        accounts: {kie: [KIE_API_KEY, AWS_SECRET_ACCESS_KEY]}
        """)
    problem = at(problems, "accounts.kie[1]")
    assert (problem.line, problem.column) == (5, 31)
    assert problem.message.startswith("AWS_SECRET_ACCESS_KEY is not a credential of kie")
    assert "KIE_API_KEY or KIE_API_KEY_<SUFFIX>" in problem.message
    assert len(problems) == 1


def test_a_foreign_value_in_the_mapping_form_is_refused(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, """\
        provider: kie
        accounts: {kie: [{KIE_API_KEY: AWS_SECRET_ACCESS_KEY}]}
        """)
    problem = at(problems, "accounts.kie[0].KIE_API_KEY")
    assert (problem.line, problem.column) == (5, 32)  # the value, not the key
    assert "AWS_SECRET_ACCESS_KEY does not extend KIE_API_KEY" in problem.message
    assert "KIE_API_KEY_<SUFFIX>" in problem.message


def test_a_mapping_key_the_provider_does_not_read_is_refused(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, """\
        provider: kie
        accounts: {kie: [{KIE_APIKEY: KIE_API_KEY_2}]}
        """)
    problem = at(problems, "accounts.kie[0].KIE_APIKEY")
    assert (problem.line, problem.column) == (5, 19)  # the key
    assert problem.message == ("kie reads no variable KIE_APIKEY; it reads: KIE_API_KEY; "
                               "did you mean KIE_API_KEY?")


def test_a_mapping_value_must_extend_its_own_key(tmp_path: Path) -> None:
    """Wiro's key may not come from a secret's variable, though both are Wiro's."""
    problems = problems_of(tmp_path, """\
        provider: wiro
        accounts:
          wiro:
            - {WIRO_API_KEY: WIRO_API_KEY_B, WIRO_API_SECRET: WIRO_API_SECRET_B}
            - {WIRO_API_KEY: WIRO_API_SECRET_C}
        """)
    assert [p.path for p in problems] == ["accounts.wiro[1].WIRO_API_KEY"]
    assert "WIRO_API_SECRET_C does not extend WIRO_API_KEY" in problems[0].message


def test_a_suffix_without_its_underscore_gets_a_hint(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, "provider: kie\naccounts: {kie: [KIE_API_KEY2]}\n")
    assert at(problems, "accounts.kie[0]").message.endswith("did you mean KIE_API_KEY_2?")


def test_gemini_and_gemini_batch_share_geminis_variables(tmp_path: Path) -> None:
    assert problems_of(tmp_path, """\
        provider: [gemini, gemini-batch]
        accounts:
          gemini: [GEMINI_API_KEY, GEMINI_API_KEY_TEAM, GOOGLE_API_KEY_2]
          gemini-batch: [{GEMINI_API_KEY: GEMINI_API_KEY_BATCH}]
        """) == []
    problems = problems_of(tmp_path, "provider: gemini\naccounts: {gemini: [KIE_API_KEY]}\n")
    assert "GEMINI_API_KEY or GEMINI_API_KEY_<SUFFIX>, GOOGLE_API_KEY or " in (
        at(problems, "accounts.gemini[0]").message)


def test_a_channel_built_in_code_never_reads_a_foreign_variable() -> None:
    """Validation refuses such a spec; the runtime asks the same rule before renaming."""
    channel = Channel("kie", "AWS_SECRET_ACCESS_KEY", {"KIE_API_KEY": "AWS_SECRET_ACCESS_KEY"},
                      documented=False)
    with pytest.raises(ValueError, match="AWS_SECRET_ACCESS_KEY: not kie's own") as caught:
        channel.environ({"AWS_SECRET_ACCESS_KEY": SECRET_VALUE})
    assert SECRET_VALUE not in str(caught.value)
    own = Channel("kie", "KIE_API_KEY_2", {"KIE_API_KEY": "KIE_API_KEY_2"}, documented=False)
    assert own.environ({"KIE_API_KEY_2": "k2"})["KIE_API_KEY"] == "k2"


# -- credentials (Secret blocks) ----------------------------------------------------------------


def test_a_block_named_after_another_variable_is_refused(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, """\
        provider: kie
        credentials: {KIE_API_KEY: aws-secret-access-key}
        """)
    problem = at(problems, "credentials.KIE_API_KEY")
    assert (problem.line, problem.column) == (5, 28)  # the block's name
    assert problem.message.startswith(
        "the Secret block for KIE_API_KEY is named 'kie-api-key', not 'aws-secret-access-key'")


def test_a_block_for_a_foreign_variable_is_refused(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, """\
        provider: [kie, runware]
        credentials: {AWS_SECRET_ACCESS_KEY: aws-secret-access-key}
        """)
    problem = at(problems, "credentials.AWS_SECRET_ACCESS_KEY")
    assert (problem.line, problem.column) == (5, 15)  # the variable
    assert problem.message.startswith(
        "AWS_SECRET_ACCESS_KEY is not a credential of this job's providers")
    assert "kie: KIE_API_KEY or KIE_API_KEY_<SUFFIX>; runware: RUNWARE_API_KEY" in (
        problem.message)


def test_a_block_for_an_own_variable_no_account_reads_is_refused(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, """\
        provider: kie
        credentials: {KIE_API_KEY_2: kie-api-key-2}
        """)
    assert at(problems, "credentials.KIE_API_KEY_2").message == (
        "no account of this job reads KIE_API_KEY_2; name it in accounts.kie or remove it here")


def test_blocks_for_every_account_of_the_job(tmp_path: Path) -> None:
    assert problems_of(tmp_path, """\
        provider: [kie, wiro]
        accounts:
          kie: [KIE_API_KEY, KIE_API_KEY_TEAM]
          wiro: [{WIRO_API_KEY: WIRO_API_KEY_B, WIRO_API_SECRET: WIRO_API_SECRET_B}]
        credentials:
          KIE_API_KEY: kie-api-key
          KIE_API_KEY_TEAM: kie-api-key-team
          WIRO_API_SECRET: wiro-api-secret
          WIRO_API_KEY_B: wiro-api-key-b
          WIRO_API_SECRET_B: wiro-api-secret-b
        """) == []


# -- base_urls: one rule for validation and the adapters ----------------------------------------

OTHER = "https://collector.example"


@pytest.mark.parametrize(("url", "environ", "allowed"), [
    pytest.param("https://api.kie.ai", {}, True, id="documented-origin"),
    pytest.param("https://API.kie.ai:443/", {}, True, id="documented-origin-spelt-out"),
    pytest.param("https://kieai.redpandaai.co", {}, True, id="documented-upload-origin"),
    pytest.param("http://api.kie.ai:8080", {}, False, id="documented-host-other-port"),
    pytest.param("https://api.kie.ai:8443", {}, False, id="documented-host-other-https-port"),
    pytest.param("http://api.kie.ai", {}, False, id="documented-host-other-scheme"),
    pytest.param("http://127.0.0.1:9000/kie", {}, True, id="loopback-ipv4"),
    pytest.param("http://127.8.0.1:9000/kie", {}, True, id="loopback-ipv4-range"),
    pytest.param("http://[::1]:9000/kie", {}, True, id="loopback-ipv6"),
    pytest.param("http://localhost:9000/kie", {}, True, id="localhost"),
    pytest.param("http://foo.localhost:9000", {}, False, id="name-under-localhost"),
    pytest.param("http://127.0.0.1.collector.example", {}, False, id="loopback-lookalike"),
    pytest.param(OTHER, {}, False, id="foreign-host"),
    pytest.param(OTHER, {"NBP_KIE_BASE_URL": f"{OTHER}/kie"}, True, id="env-base-url"),
    pytest.param(OTHER, {"NBP_KIE_UPLOAD_BASE_URL": OTHER}, True, id="env-upload-url"),
    pytest.param(OTHER, {"NBP_KIE_BASE_URL": "https://elsewhere.example"}, False,
                 id="env-names-another"),
    pytest.param(OTHER, {"NBP_HIAPI_BASE_URL": OTHER}, False, id="env-of-another-provider"),
])
def test_validation_and_the_adapter_agree_where_a_key_may_go(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    url: str, environ: dict[str, str], allowed: bool,
) -> None:
    for name in ("NBP_KIE_BASE_URL", "NBP_KIE_UPLOAD_BASE_URL", "NBP_HIAPI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    problems = problems_of(tmp_path, f"provider: kie\nbase_urls: {{kie: '{url}'}}\n")
    assert [p.path for p in problems] == ([] if allowed else ["base_urls.kie"])
    assert adapter_sends_the_key(url, environ) is allowed


def test_a_refused_base_url_says_how_to_use_it_and_shows_no_password(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, """\
        provider: kie
        base_urls: {kie: "http://user:hunter2@api.kie.ai:8080/v1"}
        """)
    problem = at(problems, "base_urls.kie")
    assert problem.message.startswith("http://api.kie.ai:8080 is not where kie's API key may go")
    assert "https://api.kie.ai:443, https://kieai.redpandaai.co:443" in problem.message
    assert problem.message.endswith("set NBP_KIE_BASE_URL in the environment")
    assert "hunter2" not in str(problem)


def test_gemini_batch_is_told_about_geminis_variable(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, "provider: gemini-batch\nbase_urls: {gemini-batch: "
                                     "'https://gemini.example'}\n")
    assert "set NBP_GEMINI_BASE_URL in the environment" in at(
        problems, "base_urls.gemini-batch").message


def adapter_sends_the_key(url: str, environ: Mapping[str, str]) -> bool:
    """Whether Kie's adapter, given `url` as its base URL (as a spec's `base_urls` reaches
    it), lets a request carrying its key through to `url`: its settings, and a client made
    as `HttpAdapter.__init__` makes it, answering from memory instead of the network."""
    cls = registry.get_class("kie")
    settings = cls.settings_from_env({**environ, "KIE_API_KEY": "kie-key"}, base_url=url)
    reached: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        reached.append(str(request.url))
        return httpx.Response(200, json={})

    async def go() -> bool:
        client = http.make_client(5.0, secret_headers=cls.secret_headers,
                                  credential_origins=settings.credential_origins,
                                  transport=httpx.MockTransport(answer))
        async with client:
            try:
                await client.get(f"{url.rstrip('/')}/api/v1/jobs/recordInfo",
                                 headers={"Authorization": "Bearer kie-key"})
            except AuthError:
                return False
            return True

    sent = asyncio.run(go())
    assert bool(reached) is sent
    return sent
