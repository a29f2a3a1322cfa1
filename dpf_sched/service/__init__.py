"""The budget service: the scheduler behind an HTTP API with per-tenant authentication (docs/service.md).

Needs the ``service`` extra (FastAPI, uvicorn). `dpf-sched serve` runs :func:`create_app` under uvicorn;
`dpf-sched tokens` manages the API tokens (:class:`~dpf_sched.service.tables.ServiceTables`).
"""

from __future__ import annotations

from dpf_sched.extras import requires_extra

with requires_extra("service"):  # without FastAPI: MissingExtraError with the pip command, not a traceback
    from dpf_sched.service.app import ServiceConfig, create_app, open_service_ledger
    from dpf_sched.service.tables import Principal, Role, ServiceTables, TokenInfo

__all__ = ["Principal", "Role", "ServiceConfig", "ServiceTables", "TokenInfo", "create_app", "open_service_ledger"]
