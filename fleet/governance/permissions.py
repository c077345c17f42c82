"""The permission table and the four built-in roles, bundles of permissions.

Every REST route declares one permission (`edgefleet.fleet.api.deps.require`); a role is
only a named set of them. Built-in roles are fixed here; custom roles are stored
(`edgefleet.fleet.store.governance_tables.RoleRow`) and may bundle any permissions.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum


class Permission(StrEnum):
    """One thing a caller may do; ``<object>:<verb>``."""

    DEVICE_READ = "device:read"
    DEVICE_WRITE = "device:write"
    DEVICE_DELETE = "device:delete"
    DEVICE_ENROLL = "device:enroll"
    MODEL_READ = "model:read"
    MODEL_UPLOAD = "model:upload"
    MODEL_PUBLISH = "model:publish"
    MODEL_APPROVE = "model:approve"
    MODEL_RETIRE = "model:retire"
    ROLLOUT_READ = "rollout:read"
    ROLLOUT_CREATE = "rollout:create"
    ROLLOUT_HANDLE = "rollout:handle"
    ROLLOUT_APPROVE = "rollout:approve"
    ALERT_READ = "alert:read"
    ALERT_ACK = "alert:ack"
    DRIFT_MANAGE = "drift:manage"
    WEBHOOK_MANAGE = "webhook:manage"
    REPOSITORY_READ = "repository:read"
    AUDIT_READ = "audit:read"
    TOKEN_MANAGE = "token:manage"  # noqa: S105  (a permission's name, not a secret)
    USER_MANAGE = "user:manage"


PERMISSION_HELP: Mapping[Permission, str] = {
    Permission.DEVICE_READ: "list devices, their telemetry, desired state and deployments",
    Permission.DEVICE_WRITE: "assign a desired state to a device",
    Permission.DEVICE_DELETE: "remove a device from the registry",
    Permission.DEVICE_ENROLL: "create enrollment tokens (pre-authorise a device) and revoke a"
    " device's identity",
    Permission.MODEL_READ: "read the model registry, aliases and lineage",
    Permission.MODEL_UPLOAD: "upload a model package",
    Permission.MODEL_PUBLISH: "sign a version into the TUF repository (lab mode) or upload"
    " offline-signed targets metadata",
    Permission.MODEL_APPROVE: "approve or reject a version someone else uploaded; move aliases",
    Permission.MODEL_RETIRE: "retire a version (it starts no rollout)",
    Permission.ROLLOUT_READ: "read rollouts, their devices and history",
    Permission.ROLLOUT_CREATE: "plan a rollout, or change one",
    Permission.ROLLOUT_HANDLE: "pause, resume, abort and roll back a rollout",
    Permission.ROLLOUT_APPROVE: "approve or deny a rollout someone else created",
    Permission.ALERT_READ: "read drift scores, metrics and alerts",
    Permission.ALERT_ACK: "acknowledge an alert",
    Permission.DRIFT_MANAGE: "set drift thresholds and reference profiles",
    Permission.WEBHOOK_MANAGE: "create, change and delete webhooks",
    Permission.REPOSITORY_READ: "fetch TUF metadata and model packages",
    Permission.AUDIT_READ: "read and export the audit log",
    Permission.TOKEN_MANAGE: "create, list and revoke API tokens of any user",
    Permission.USER_MANAGE: "create users and service accounts, change grants and roles",
}

_VIEWER = frozenset(
    {
        Permission.DEVICE_READ,
        Permission.MODEL_READ,
        Permission.ROLLOUT_READ,
        Permission.ALERT_READ,
        Permission.REPOSITORY_READ,
    }
)
_OPERATOR = _VIEWER | {
    Permission.DEVICE_WRITE,
    Permission.DEVICE_ENROLL,
    Permission.MODEL_UPLOAD,
    Permission.MODEL_PUBLISH,
    Permission.ROLLOUT_CREATE,
    Permission.ROLLOUT_HANDLE,
    Permission.ALERT_ACK,
    Permission.DRIFT_MANAGE,
    Permission.WEBHOOK_MANAGE,
}
_APPROVER = _OPERATOR | {
    Permission.MODEL_APPROVE,
    Permission.MODEL_RETIRE,
    Permission.ROLLOUT_APPROVE,
    Permission.AUDIT_READ,
}

BUILTIN_ROLES: Mapping[str, frozenset[Permission]] = {
    "viewer": _VIEWER,
    "operator": _OPERATOR,
    "approver": _APPROVER,
    "admin": frozenset(Permission),
}

# What a device presenting the repository device token may do.
DEVICE_PERMISSIONS = frozenset({Permission.REPOSITORY_READ})


def parse_permissions(names: list[str]) -> frozenset[Permission]:
    """The permissions named; raises `ValueError` naming the first unknown one."""
    out: set[Permission] = set()
    for name in names:
        try:
            out.add(Permission(name))
        except ValueError:
            raise ValueError(
                f"unknown permission {name!r}; known: {', '.join(p.value for p in Permission)}"
            ) from None
    return frozenset(out)
