"""Creates what the contract tests need on a running service and prints it as shell exports:
an admin token, a field worker (with facility) and their token."""

import json
import os
import sys
import urllib.request
import uuid

BASE_URL = os.environ["BASE_URL"]


def call(method, path, body=None, token=None):
    request = urllib.request.Request(BASE_URL + path, method=method)
    request.add_header("content-type", "application/json")
    if token:
        request.add_header("authorization", f"Bearer {token}")
    data = json.dumps(body).encode() if body is not None else None
    with urllib.request.urlopen(request, data) as response:
        return json.loads(response.read() or b"null")


admin = call("POST", "/api/auth/login", {"email": os.environ["ADMIN_EMAIL"], "password": os.environ["ADMIN_PASSWORD"]})
admin_token = admin["access_token"]
tag = uuid.uuid4().hex[:8]
councils = call("GET", "/api/councils?per_page=100", token=admin_token)["data"]
gasabo = next(c for c in councils if c["name"] == "Gasabo")
facility = call(
    "POST", "/api/facilities",
    {"code": f"CT-{tag}", "name": f"Contract test centre {tag}", "council_id": gasabo["id"],
     "latitude": -1.9456, "longitude": 30.127},
    token=admin_token,
)
email, password = f"field-{tag}@contract.example", "a long enough passphrase"
call(
    "POST", "/api/users",
    {"email": email, "password": password, "first_name": "Field", "last_name": "Worker",
     "role": "data_clerk", "facility_id": facility["id"]},
    token=admin_token,
)
field = call("POST", "/api/auth/login", {"email": email, "password": password})
print(f"export ADMIN_TOKEN={admin_token}")
print(f"export FIELD_TOKEN={field['access_token']}")
print(f"export FIELD_EMAIL={email}")
print(f"export FIELD_PASSWORD='{password}'")
print(f"export FACILITY_ID={facility['id']}")
sys.stdout.flush()
