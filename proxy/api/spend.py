"""The admin's spend reports (master key only), from the ledger of proxy/spend.py:

    GET /spend/keys?start_date=YYYY-MM-DD&end_date=YYYY-MM-DD         per key (LiteLLM's path)
    GET /spend/report?start_date=...&end_date=...&group_by=key|team|model

Dates are UTC days, both included; by default the ledger's whole retention up to today.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any, get_args

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from proxy.api.deps import ServicesDep, require_master_key
from proxy.errors import invalid_request
from proxy.spend import GroupBy

router = APIRouter(dependencies=[Depends(require_master_key)])


@router.get("/spend/keys")
async def spend_keys(request: Request, services: ServicesDep) -> Response:
    start, end = _range(request, services.settings.spend.retention_days)
    return _json({"start_date": start.isoformat(), "end_date": end.isoformat(),
                  "keys": await services.spend.report(start, end, "key")})


@router.get("/spend/report")
async def spend_report(request: Request, services: ServicesDep) -> Response:
    start, end = _range(request, services.settings.spend.retention_days)
    group_by = request.query_params.get("group_by", "key")
    if group_by not in get_args(GroupBy):
        raise invalid_request(f"'group_by' must be one of {', '.join(get_args(GroupBy))}.", param="group_by")
    rows = await services.spend.report(start, end, group_by)  # type: ignore[arg-type]
    return _json({"start_date": start.isoformat(), "end_date": end.isoformat(), "group_by": group_by,
                  "rows": rows})


def _range(request: Request, retention_days: int) -> tuple[date, date]:
    today = datetime.now(UTC).date()
    end = _date(request, "end_date") or today
    start = _date(request, "start_date") or end - timedelta(days=retention_days - 1)
    if start > end:
        raise invalid_request("'start_date' is after 'end_date'.", param="start_date")
    # Days older than the retention are gone: reading them would only cost time.
    return max(start, today - timedelta(days=retention_days - 1)), end


def _date(request: Request, name: str) -> date | None:
    value = request.query_params.get(name)
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise invalid_request(f"'{name}' must be a date as YYYY-MM-DD.", param=name) from None


def _json(payload: dict[str, Any]) -> Response:
    return Response(orjson.dumps(payload), media_type="application/json")
