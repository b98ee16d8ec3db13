"""Kompliant error codes mapped onto the ``KompliantError`` tree of ``workers.core.errors``."""

from __future__ import annotations

from workers.core.errors import (
    KompliantBadRequestError,
    KompliantConfigurationViolationError,
    KompliantError,
    KompliantNotFoundError,
    KompliantRuleViolationError,
)

ERROR_CLASSES: dict[str, type[KompliantError]] = {
    "BAD_REQUEST": KompliantBadRequestError,
    "ENTITY_NOT_FOUND": KompliantNotFoundError,
    "SYSTEM_RULE_VIOLATION": KompliantRuleViolationError,
    "ACCOUNT_CONFIGURATION_VIOLATION": KompliantConfigurationViolationError,
}
"""Error class for the first error object's ``code``; any other code is a plain ``KompliantError``."""
