"""The hours an institution has to contact an enterprise once it holds a lead (pure: the demand
service's, the matcher's and the notifier's rule, in one place)."""

from __future__ import annotations

DEFAULT_CONTACT_SLA_HOURS = 72  # for an institution that set none: "within 3 days"
MAX_CONTACT_SLA_HOURS = 720


def valid_hours(hours: int) -> bool:
    """Whether ``hours`` may be an SLA as announced (0 = not set)."""
    return 0 <= hours <= MAX_CONTACT_SLA_HOURS


def contact_sla(product_policy_hours: int, institution_policy_hours: int, institution_hours: int
                ) -> tuple[int, str]:
    """(hours, where they come from) of a lead's contact SLA, most specific first: the contact policy
    set on the notifier for its product, then for its institution, then the institution's own
    ``contact_sla_hours``, then the default (0 = not set)."""
    for hours, source in ((product_policy_hours, "product policy"), (institution_policy_hours, "institution policy"),
                          (institution_hours, "institution")):
        if hours > 0:
            return hours, source
    return DEFAULT_CONTACT_SLA_HOURS, "default"
