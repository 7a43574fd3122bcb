#!/usr/bin/env bash
# The contract checks against a running service (BASE_URL, ADMIN_EMAIL, ADMIN_PASSWORD):
# a client generated from openapi.yaml runs a scenario; schemathesis fuzzes every operation with
# all checks, as an admin and as a field worker; headless Chromium renders /docs.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)
cd "$here"
# A virtual environment of its own: a distribution's Python refuses pip installs into itself
# (PEP 668), and nothing is left in the machine's.
venv=/tmp/field-attendance-ci/venv
if ! python3 -m venv "$venv" >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
  python3 -m venv "$venv"
fi
# shellcheck disable=SC1091
source "$venv/bin/activate"
python3 -m pip install -q --disable-pip-version-check -r requirements.txt -c constraints.txt
users=$(python3 setup_users.py)
eval "$users"

echo "--- generated Python client"
rm -rf "$here/build"
openapi-python-client generate --path "$root/openapi.yaml" --output-path "$here/build/client" >/dev/null
PIP_CONSTRAINT="$here/constraints.txt" python3 -m pip install -q --disable-pip-version-check "$here/build/client"
python3 client_scenario.py

# The token a run fuzzed with must still be good at its end: a run whose token stopped working
# partway through would have checked nothing but 401s from there on.
still_signed_in() {
  python3 - "$1" "$2" <<'PY'
import os, sys, urllib.error, urllib.request
role, token = sys.argv[1], sys.argv[2]
request = urllib.request.Request(os.environ["BASE_URL"] + "/api/users/me",
                                 headers={"Authorization": "Bearer " + token})
try:
    urllib.request.urlopen(request).close()
except urllib.error.HTTPError as refused:
    sys.exit(f"the {role} token stopped working during its run: {refused.code}")
print(f"the {role} token still works after its run")
PY
}

# One worker: with two, schemathesis parses sources in two threads at once, and CPython 3.11
# before 3.11.8 can then fail in its ast module ("AST constructor recursion depth mismatch").
# The field worker's run first: the admin's may deactivate, demote or re-password any user it
# finds in a list (the field worker among them), which ends their token.
echo "--- schemathesis, field-role token"
schemathesis run "$root/openapi.yaml" --url "$BASE_URL" -H "Authorization: Bearer $FIELD_TOKEN" \
  --checks all --max-examples 50 --workers 1 --seed 2
still_signed_in field-role "$FIELD_TOKEN"
echo "--- schemathesis, admin token"
schemathesis run "$root/openapi.yaml" --url "$BASE_URL" -H "Authorization: Bearer $ADMIN_TOKEN" \
  --checks all --max-examples 50 --workers 1 --seed 1
still_signed_in admin "$ADMIN_TOKEN"

echo "--- Swagger UI in headless Chromium"
# Debian's package is `chromium`; Ubuntu's `chromium-browser` (docs_check.sh takes either).
if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
ARTIFACT_DIR="$root/target/ci-artifacts" bash "$here/docs_check.sh"
