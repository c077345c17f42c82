"""A thin typed client of the fleet's REST API, for ``edgefleet ctl``.

One method per call the command line makes; each returns a `edgefleet.fleet.ctl.views`
model. Every failure leaves as one `edgefleet.fleet.ctl.errors.CtlError`, converted
here and nowhere else: no answer at all is a `TransportError`, an error status an
`ApiError` (`AuthError` for 401 and 403) carrying the API's ``error.code`` and
``error.message``, and an answer that is not what the API documents (a proxy's HTML
page, a server of another kind) an `ApiError` with code ``bad_response``. Messages name
the request (``GET /v1/devices/pi-01``) and the fleet's URL.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ValidationError

from edgefleet.fleet.ctl import views
from edgefleet.fleet.ctl.config import CtlConfig
from edgefleet.fleet.ctl.errors import ApiError, AuthError, TransportError
from edgefleet.shared import __version__

T = TypeVar("T", bound=BaseModel)

Params = Mapping[str, str | int | float | bool | None]


class FleetClient:
    """The fleet's REST API over one `httpx.Client`; use as a context manager."""

    def __init__(self, config: CtlConfig, *, transport: httpx.BaseTransport | None = None) -> None:
        headers = {"User-Agent": f"edgefleet-ctl/{__version__}", "Accept": "application/json"}
        if config.token:
            headers["Authorization"] = f"Bearer {config.token}"
        self.url = config.url
        self._http = httpx.Client(
            base_url=config.url,
            headers=headers,
            timeout=config.timeout_s,
            verify=str(config.ca_file) if config.ca_file else True,
            transport=transport,
        )

    def __enter__(self) -> FleetClient:
        return self

    def __exit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # --- devices ---------------------------------------------------------------------

    def whoami(self) -> views.WhoAmI:
        return self._call(views.WhoAmI, "GET", "/v1/whoami")

    def devices(
        self,
        *,
        tag: str | None = None,
        online: bool | None = None,
        hardware: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> views.DevicePage:
        params = {"tag": tag, "online": online, "hardware": hardware}
        return self._call(
            views.DevicePage,
            "GET",
            "/v1/devices",
            params=params | {"limit": limit, "offset": offset},
        )

    def device(self, device_id: str) -> views.Device:
        return self._call(views.Device, "GET", f"/v1/devices/{_seg(device_id)}")

    def deployments(self, device_id: str) -> views.DeviceDeployments:
        path = f"/v1/devices/{_seg(device_id)}/deployments"
        return self._call(views.DeviceDeployments, "GET", path)

    def assign(
        self, device_id: str, model: str, version: str, *, rollback: bool = False
    ) -> views.DesiredState:
        body = {"model": model, "version": version, "rollback": rollback}
        path = f"/v1/devices/{_seg(device_id)}/desired"
        return self._call(views.DesiredState, "PUT", path, json=body)

    def enrollment_token(
        self,
        *,
        device_id: str | None = None,
        key_fingerprint: str | None = None,
        expires_in_s: int | None = None,
    ) -> views.EnrollmentToken:
        body: dict[str, Any] = {"device_id": device_id, "key_fingerprint": key_fingerprint}
        if expires_in_s is not None:
            body["expires_in_s"] = expires_in_s
        body = {k: v for k, v in body.items() if v is not None}
        return self._call(views.EnrollmentToken, "POST", "/v1/enrollment-tokens", json=body)

    # --- models ----------------------------------------------------------------------

    def push(
        self, package: Path, *, lineage: Params | None = None
    ) -> tuple[views.ModelVersion, bool]:
        """Upload a package file (streamed, not read into memory); returns the version
        and whether it is new (201) rather than the same bytes again (200). Raises
        `OSError` if the file cannot be read."""
        with package.open("rb") as body:
            response = self._send(
                "POST",
                "/v1/models",
                params=lineage,
                content=body,
                headers={"Content-Type": "application/octet-stream"},
            )
        return _parse(views.ModelVersion, response, "POST /v1/models"), response.status_code == 201

    def models(self, name: str | None = None) -> list[views.ModelVersion]:
        response = self._send("GET", "/v1/models", params={"name": name})
        return _parse_list(views.ModelVersion, response, "GET /v1/models")

    def model(self, name: str, version: str) -> views.ModelVersion:
        return self._call(views.ModelVersion, "GET", f"/v1/models/{_seg(name)}/{_seg(version)}")

    def publish(self, name: str, version: str) -> views.ModelVersion:
        path = f"/v1/models/{_seg(name)}/{_seg(version)}/publish"
        return self._call(views.ModelVersion, "POST", path)

    def review(
        self, name: str, version: str, action: str, *, remark: str | None = None
    ) -> views.Review:
        """``action`` is ``approve``, ``reject`` or ``retire``."""
        path = f"/v1/models/{_seg(name)}/{_seg(version)}/{action}"
        body = {"remark": remark} if remark is not None else None
        return self._call(views.Review, "POST", path, json=body)

    # --- rollouts --------------------------------------------------------------------

    def create_rollout(self, spec: Mapping[str, Any]) -> views.Rollout:
        return self._call(views.Rollout, "POST", "/v1/rollouts", json=dict(spec))

    def rollouts(self, *, status: str | None = None, limit: int = 100) -> views.RolloutPage:
        params = {"status": status, "limit": limit}
        return self._call(views.RolloutPage, "GET", "/v1/rollouts", params=params)

    def rollout(self, rollout_id: str) -> views.Rollout:
        return self._call(views.Rollout, "GET", f"/v1/rollouts/{_seg(rollout_id)}")

    def command(self, rollout_id: str, command: str, *, remark: str | None = None) -> views.Rollout:
        """``command``: pause, resume, abort, rollback, approve or deny. The answer is the
        rollout's detail (an unreadable rollout's abort answers its summary)."""
        body = {"remark": remark} if remark is not None else None
        path = f"/v1/rollouts/{_seg(rollout_id)}/{command}"
        return self._call(views.Rollout, "POST", path, json=body)

    # --- alerts ----------------------------------------------------------------------

    def alerts(
        self,
        *,
        since: str | None = None,
        kind: str | None = None,
        model: str | None = None,
        limit: int = 100,
    ) -> views.AlertPage:
        params = {"since": since, "kind": kind, "model": model, "limit": limit}
        return self._call(views.AlertPage, "GET", "/v1/alerts", params=params)

    def ack(self, alert_id: str, *, remark: str | None = None) -> views.Alert:
        body = {"remark": remark} if remark is not None else None
        return self._call(views.Alert, "POST", f"/v1/alerts/{_seg(alert_id)}/ack", json=body)

    # --- plumbing --------------------------------------------------------------------

    def _call(
        self,
        model: type[T],
        method: str,
        path: str,
        *,
        params: Params | None = None,
        json: Any = None,
    ) -> T:
        response = self._send(method, path, params=params, json=json)
        return _parse(model, response, f"{method} {path}")

    def _send(
        self,
        method: str,
        path: str,
        *,
        params: Params | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        """The response to a request with a 2xx status; raises `TransportError` or
        `ApiError`/`AuthError`."""
        query = {k: _param(v) for k, v in (params or {}).items() if v is not None}
        what = f"{method} {path}"
        try:
            response = self._http.request(method, path, params=query, **kwargs)
        except httpx.TimeoutException as e:
            raise TransportError(f"{what}: no answer from {self.url} in time ({e})") from e
        except httpx.TransportError as e:
            reason = str(e) or type(e).__name__
            raise TransportError(f"{what}: cannot reach the fleet at {self.url}: {reason}") from e
        if response.is_success:
            return response
        raise _api_error(what, response)


def _api_error(what: str, response: httpx.Response) -> ApiError:
    """The error for a non-2xx answer, with the API's code and message when it sent its
    error body, else the status phrase and the start of what it sent."""
    status = response.status_code
    code, message = f"http_{status}", response.reason_phrase or "error"
    try:
        info = response.json().get("error", {})
        code = str(info.get("code") or code)
        message = str(info.get("message") or message)
    except (ValueError, AttributeError):
        text = response.text.strip()
        if text:
            message = f"{message}: {text[:200]}"
    if status == 401:
        message += " (check EDGEFLEET_TOKEN or the profile's token)"
    cls = AuthError if status in (401, 403) else ApiError
    return cls(what, status, code, message)


def _parse(model: type[T], response: httpx.Response, what: str) -> T:
    try:
        return model.model_validate(response.json())
    except (ValueError, ValidationError) as e:
        raise _bad_response(what, response, e) from e


def _parse_list(model: type[T], response: httpx.Response, what: str) -> list[T]:
    try:
        data = response.json()
        if not isinstance(data, list):
            raise ValueError(f"expected a list, got {type(data).__name__}")
        return [model.model_validate(item) for item in data]
    except (ValueError, ValidationError) as e:
        raise _bad_response(what, response, e) from e


def _bad_response(what: str, response: httpx.Response, error: Exception) -> ApiError:
    if isinstance(error, ValidationError):
        first = error.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        reason = f"{where}: {first['msg']}"
    else:
        reason = "not JSON" if isinstance(error, json.JSONDecodeError) else str(error)
    return ApiError(
        what,
        response.status_code,
        "bad_response",
        f"the answer is not what the edgefleet API sends ({reason}); is {response.url.host}"
        " an edgefleet fleet?",
    )


def _param(value: str | int | float | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _seg(value: str) -> str:
    """One path segment, escaped: an id with ``/`` or ``?`` cannot change the route."""
    return quote(value, safe="")
