"""Claims rules (``claims:`` / ``admin_claims:``): every rule must pass."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from yatagarasu.config.typed import join
from yatagarasu.errors import ConfigError

OPERATORS = (
    "equals", "not_equals", "in", "not_in", "contains",
    "gt", "gte", "lt", "lte", "exists", "regex",
)  # fmt: skip
_MISSING = object()


@dataclass(frozen=True)
class ClaimRule:
    """
    One rule on one claim.

    :ivar claim: claim name, dotted for nested claims (``realm_access.roles``).
    :ivar operator: one of :data:`OPERATORS`.
    :ivar value: what to compare with (a list for ``in``/``not_in``, a number for the
        comparisons, a pattern for ``regex``, ``true``/``false`` for ``exists``).
    """

    claim: str
    operator: str
    value: Any = None
    _pattern: re.Pattern[str] | None = field(default=None, init=False, repr=False, compare=False)

    def check(self, path: str) -> None:
        if not self.claim or any(not part for part in self.claim.split(".")):
            raise ConfigError(join(path, "claim"), f"not a claim path: {self.claim!r}")
        if self.operator not in OPERATORS:
            raise ConfigError(
                join(path, "operator"),
                f"unknown operator {self.operator!r} (one of {', '.join(OPERATORS)})",
            )
        value_path = join(path, "value")
        if self.operator in ("in", "not_in") and not isinstance(self.value, list | tuple):
            raise ConfigError(value_path, f"{self.operator} needs a list")
        if self.operator in ("gt", "gte", "lt", "lte") and (
            isinstance(self.value, bool) or not isinstance(self.value, int | float)
        ):
            raise ConfigError(value_path, f"{self.operator} needs a number")
        if (
            self.operator == "exists"
            and self.value is not None
            and not isinstance(self.value, bool)
        ):
            raise ConfigError(value_path, "exists takes true or false (default true)")
        if self.operator == "regex":
            if not isinstance(self.value, str):
                raise ConfigError(value_path, "regex needs a pattern string")
            try:
                object.__setattr__(self, "_pattern", re.compile(self.value))
            except re.error as e:
                raise ConfigError(value_path, f"invalid regular expression: {e}") from None
        if self.operator in ("equals", "not_equals", "contains") and self.value is None:
            raise ConfigError(value_path, f"{self.operator} needs a value")

    def matches(self, claims: Mapping[str, Any]) -> bool:
        """
        :param claims: the token's claims.
        :returns: whether this rule passes.
        """
        actual = claim_value(claims, self.claim)
        op = self.operator
        if op == "exists":
            return (actual is not _MISSING) == (self.value is not False)
        if actual is _MISSING:
            return op in ("not_equals", "not_in")
        if op == "equals":
            return bool(actual == self.value)
        if op == "not_equals":
            return bool(actual != self.value)
        if op == "in":
            return _any_of(actual, self.value)
        if op == "not_in":
            return not _any_of(actual, self.value)
        if op == "contains":
            if isinstance(actual, str):
                return isinstance(self.value, str) and self.value in actual
            if isinstance(actual, list | tuple):
                return self.value in actual
            return False
        if op == "regex":
            assert self._pattern is not None
            return isinstance(actual, str) and self._pattern.search(actual) is not None
        if isinstance(actual, bool) or not isinstance(actual, int | float):
            return False
        return bool(
            {
                "gt": actual > self.value,
                "gte": actual >= self.value,
                "lt": actual < self.value,
                "lte": actual <= self.value,
            }[op]
        )


def _any_of(actual: Any, allowed: Sequence[Any]) -> bool:
    if isinstance(actual, list | tuple):
        return any(item in allowed for item in actual)
    return actual in allowed


def claim_value(claims: Mapping[str, Any], dotted: str) -> Any:
    """
    Look up a possibly nested claim.

    :param claims: the claims.
    :param dotted: ``a.b.c``; an exact top-level key with dots wins over nesting.
    :returns: the value, or a private sentinel when absent.
    """
    if dotted in claims:
        return claims[dotted]
    node: Any = claims
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return _MISSING
        node = node[part]
    return node


def failing_rule(rules: Sequence[ClaimRule], claims: Mapping[str, Any]) -> ClaimRule | None:
    """
    :param rules: the rules (all must pass).
    :param claims: the token's claims.
    :returns: the first rule that fails, or ``None`` when all pass.
    """
    for rule in rules:
        if not rule.matches(claims):
            return rule
    return None
