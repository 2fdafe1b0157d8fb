"""Provider adapters for Nano Banana Pro resellers, their registry and local emulators."""

from nbp.providers.base import (
    Capabilities,
    Finished,
    ImageRequest,
    Pending,
    Provider,
    ProviderSettings,
    Reference,
    ResultImage,
    Secret,
    Submitted,
)

__all__ = [
    "Capabilities",
    "Finished",
    "ImageRequest",
    "Pending",
    "Provider",
    "ProviderSettings",
    "Reference",
    "ResultImage",
    "Secret",
    "Submitted",
]
