#!/usr/bin/env bash
# Loads /docs in headless Chromium (Debian's `chromium` or Ubuntu's `chromium-browser`), checks that Swagger UI lists the
# operations, and keeps a screenshot as a CI artifact.
set -euo pipefail
: "${BASE_URL:?}"
out=${ARTIFACT_DIR:-target/ci-artifacts}
mkdir -p "$out"
browser=$(command -v chromium || command -v chromium-browser)
profile=$(mktemp -d)
flags=(--headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking
       --disable-component-update --disable-sync --user-data-dir="$profile" --virtual-time-budget=20000)
"$browser" "${flags[@]}" --dump-dom "$BASE_URL/docs/" > "$out/docs.html" 2>/dev/null
"$browser" "${flags[@]}" --window-size=1280,2400 --screenshot="$out/docs.png" "$BASE_URL/docs/" 2>/dev/null
rm -rf "$profile"
operations=$({ grep -o 'opblock-summary-path' "$out/docs.html" || true; } | wc -l)
[ "$operations" -gt 0 ] || { echo "docs: Swagger UI listed no operation (see $out/docs.html)"; exit 1; }
for path in /api/auth/login /api/attendance/clock-in /api/sync/push /api/facilities/import; do
  grep -q "data-path=\"$path\"" "$out/docs.html" || { echo "docs: $path is not listed"; exit 1; }
done
[ -s "$out/docs.png" ] || { echo "docs: no screenshot"; exit 1; }
echo "docs: Swagger UI lists $operations operations; screenshot at $out/docs.png"
