"""Which environment variables and Secret blocks a spec may name: only its providers' own
credentials, so a spec from someone else cannot send any other secret of yours to a provider
(issue 20, item 1).

A provider's own variables are its documented ones (`Capabilities.env_vars` and
`optional_env_vars`: `KIE_API_KEY`; Wiro's `WIRO_API_KEY`, `WIRO_API_SECRET`; Gemini's
`GEMINI_API_KEY`, `GOOGLE_API_KEY`) and any that extends one: the documented name, `_`, and a
suffix of capitals, digits and `_`. A Secret block is named after the variable it stands for.

    owner(("KIE_API_KEY",), "KIE_API_KEY_TEAM")          # "KIE_API_KEY"
    owner(("KIE_API_KEY",), "AWS_SECRET_ACCESS_KEY")     # None: not kie's
    extends("WIRO_API_KEY", "WIRO_API_SECRET_B")         # False
    block_name("KIE_API_KEY_2")                          # "kie-api-key-2"

The checks that locate a problem in a spec are `flows.spec.loader`'s; the runtime reads
these rules again where a secret is read (`flows.spec.channels.Channel.environ`,
`flows.orchestration.secrets.secret_blocks`), so a spec built in code cannot skip them.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence

from nbp.providers.base import Capabilities

_SUFFIX = re.compile(r"_[A-Z0-9_]+")


def provider_variables(caps: Capabilities) -> tuple[str, ...]:
    """A provider's documented credential variables, the one it reads first first."""
    return (*caps.env_vars, *caps.optional_env_vars)


def extends(documented: str, variable: str) -> bool:
    """`variable` is `documented` or extends it (`KIE_API_KEY_2`, `KIE_API_KEY_TEAM`)."""
    if variable == documented:
        return True
    rest = variable[len(documented):] if variable.startswith(documented) else ""
    return _SUFFIX.fullmatch(rest) is not None


def owner(documented: Sequence[str], variable: str) -> str | None:
    """The documented variable that `variable` is or extends (the longest when several do),
    None when it is none of the provider's."""
    found = [name for name in documented if extends(name, variable)]
    return max(found, key=len) if found else None


def block_name(variable: str) -> str:
    """The name of the Secret block that may stand for `variable`: lowercase, `_` -> `-`.
    Tied to the variable so a spec cannot hand a provider a block holding another secret."""
    return variable.lower().replace("_", "-")


def allowed(documented: Sequence[str]) -> str:
    """What a provider's variables may be, for messages: `KIE_API_KEY or KIE_API_KEY_<SUFFIX>`."""
    return ", ".join(f"{name} or {name}_<SUFFIX>" for name in documented) or "none"


def did_you_mean(documented: Sequence[str], variable: str) -> str:
    """` did you mean X?` for a variable that looks like a misspelt provider variable or
    extension (`KIE_KEY_2` -> `KIE_API_KEY_2`, `KIE_API_KEY2` -> `KIE_API_KEY_2`), else ""."""
    candidates = list(documented)
    for name in documented:
        rest = variable[len(name):] if variable.startswith(name) else ""
        if rest.isalnum():
            return f" did you mean {name}_{rest}?"
        head, _, tail = variable.rpartition("_")
        if head and tail:
            candidates.append(f"{name}_{tail}")
    return _closest(candidates, variable)


def foreign_variable(provider: str, documented: Sequence[str], variable: str) -> str:
    """Why a spec may not name `variable` for `provider` (it names variables, never values)."""
    return (f"{variable} is not a credential of {provider}: a spec may name only "
            f"{allowed(documented)} for {provider}, so no other secret of yours is sent "
            f"there" + _hint(did_you_mean(documented, variable)))


def foreign_value(provider: str, documented: str, variable: str) -> str:
    """Why the mapping entry `{documented: variable}` of an account is refused."""
    return (f"{variable} does not extend {documented}: an account's {documented} comes from "
            f"{documented} or {documented}_<SUFFIX> (e.g. {documented}_2), so a spec cannot "
            f"pass another secret of yours off as {provider}'s {documented}"
            + _hint(did_you_mean((documented,), variable)))


def unknown_key(provider: str, documented: Sequence[str], variable: str) -> str:
    """Why a mapping entry's key is refused: the keys are the provider's documented
    variables, the ones its adapter reads."""
    return (f"{provider} reads no variable {variable}; it reads: "
            f"{', '.join(documented) or 'none'}" + _hint(_closest(documented, variable)))


def foreign_block_variable(read: Mapping[str, Sequence[str]], variable: str) -> str:
    """Why `credentials` may not name `variable`: no provider of the job (`read`: provider ->
    its documented variables) owns it."""
    everyone = [name for names in read.values() for name in names]
    owned = "; ".join(f"{provider}: {allowed(names)}" for provider, names in read.items())
    return (f"{variable} is not a credential of this job's providers: a Secret block may "
            f"stand only for one of their own variables ({owned})"
            + _hint(did_you_mean(everyone, variable)))


def wrong_block_name(variable: str, block: str) -> str:
    """Why a Secret block's name is refused (block names are no secrets; values never show)."""
    return (f"the Secret block for {variable} is named {block_name(variable)!r}, not {block!r}: "
            "a block is named after its variable (lowercase, '_' -> '-'), so a spec cannot "
            "hand a provider a block that holds another secret")


def _closest(candidates: Sequence[str], variable: str) -> str:
    close = difflib.get_close_matches(variable, candidates, n=1, cutoff=0.75)
    return f" did you mean {close[0]}?" if close else ""


def _hint(text: str) -> str:
    return f";{text}" if text else ""
