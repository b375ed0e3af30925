"""PolicyRule of rbac.authorization.k8s.io/v1 as a value, and the way it is written in objects."""

from __future__ import annotations

from dataclasses import dataclass

from agent.errors import InvalidManifest

FIELDS = (("apiGroups", "api_groups"), ("resources", "resources"), ("resourceNames", "resource_names"),
          ("nonResourceURLs", "non_resource_urls"), ("verbs", "verbs"))


@dataclass(frozen=True)
class PolicyRule:
    """One rule: every verb on every (group, resource[, name]) it names, or on every non-resource URL."""

    verbs: tuple[str, ...]
    api_groups: tuple[str, ...] = ()
    resources: tuple[str, ...] = ()
    resource_names: tuple[str, ...] = ()
    non_resource_urls: tuple[str, ...] = ()

    def to_json(self) -> dict:
        """The object form, fields in the order Kubernetes prints them, empty lists left out (apiGroups
        stays: [""] is the core group)."""
        out = {}
        for key, attribute in FIELDS:
            value = getattr(self, attribute)
            if value or (key == "apiGroups" and self.resources):
                out[key] = list(value)
        return out

    def sort_key(self) -> tuple:
        """Resource rules by group, then resources; non-resource rules after them."""
        return (bool(self.non_resource_urls), self.api_groups, self.resources, self.resource_names,
                self.non_resource_urls, self.verbs)

    def describe(self) -> str:
        if self.non_resource_urls:
            return f"{','.join(self.verbs)} {','.join(self.non_resource_urls)}"
        groups = ",".join(group or '""' for group in self.api_groups)
        text = f"{','.join(self.verbs)} {','.join(self.resources)} (apiGroups {groups})"
        if self.resource_names:
            text += f" named {','.join(self.resource_names)}"
        return text

    @classmethod
    def from_json(cls, data, where: str) -> "PolicyRule":
        if not isinstance(data, dict):
            raise InvalidManifest(f"{where}: a rule must be an object")
        values = {}
        for key, attribute in FIELDS:
            items = data.get(key) or []
            if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
                raise InvalidManifest(f"{where}: {key} must be a list of strings")
            values[attribute] = tuple(items)
        return cls(**values)
