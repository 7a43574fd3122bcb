"""A short scenario through a client generated from openapi.yaml by openapi-python-client:
log in, clock in, clock out, push a sync batch, pull. Proves the spec usable as it stands."""

import datetime as dt
import os
import uuid

from field_attendance_api_client import Client
from field_attendance_api_client.api.attendance import active, clock_in, clock_out
from field_attendance_api_client.api.auth import login
from field_attendance_api_client.api.sync import pull_changes, push_changes
from field_attendance_api_client.models import (
    ClockIn,
    ClockOut,
    LoginRequest,
    PushRequest,
    PullResponse,
    PushResponse,
    TokenResponse,
)

BASE_URL = os.environ["BASE_URL"]
LAT, LNG = -1.9456, 30.127

client = Client(base_url=BASE_URL, raise_on_unexpected_status=True)
token = login.sync(client=client, body=LoginRequest(email=os.environ["FIELD_EMAIL"], password=os.environ["FIELD_PASSWORD"]))
assert isinstance(token, TokenResponse), token
authed = client.with_headers({"Authorization": f"Bearer {token.access_token}"})

record = clock_in.sync(client=authed, body=ClockIn(latitude=LAT, longitude=LNG, accuracy_m=7.5, notes="generated client"))
assert record.status == "open", record
assert record.outside_geofence is False
assert active.sync(client=authed).attendance.id == record.id

closed = clock_out.sync(client=authed, body=ClockOut(latitude=LAT, longitude=LNG))
assert closed.status == "closed" and closed.id == record.id, closed

start = dt.datetime.now(dt.timezone.utc).replace(microsecond=0) - dt.timedelta(days=2)
offline_id = str(uuid.uuid4())
# Records are any JSON values to the spec (each is checked on its own, and a bad one rejected
# alone), so the client sends them as plain dicts shaped as PushRecord.
batch = PushRequest(
    device_id="generated-client",
    records=[
        {
            "kind": "attendance", "op": "upsert", "id": offline_id, "sync_version": 1,
            "client_timestamp": start.isoformat(),
            "data": {
                "facility_id": os.environ["FACILITY_ID"],
                "clock_in_at": start.isoformat(),
                "clock_out_at": (start + dt.timedelta(hours=8)).isoformat(),
                "clock_in_location": {"latitude": LAT, "longitude": LNG},
                "clock_out_location": {"latitude": LAT, "longitude": LNG},
            },
        }
    ],
)
pushed = push_changes.sync(client=authed, body=batch)
assert isinstance(pushed, PushResponse), pushed
assert [r.status for r in pushed.results] == ["created"], pushed
again = push_changes.sync(client=authed, body=batch)
assert [r.status for r in again.results] == ["duplicate"], again

pulled = pull_changes.sync(client=authed)
assert isinstance(pulled, PullResponse), pulled
ids = {r.id for r in pulled.changes.attendance.created} | {r.id for r in pulled.changes.attendance.updated}
assert {str(record.id), offline_id} <= {str(i) for i in ids}, ids
print("generated-client scenario: 1 passed, 0 failed")
