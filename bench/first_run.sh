#!/usr/bin/env bash
# A first ./run on a fresh VAR_DIR, then one deep consult through the API, timed end to end.
# Prints figures; asserts nothing. Run on an idle machine from the repository root:
#     bash bench/first_run.sh ["a clinical question"]
# Uses its own VAR_DIR (default /tmp/first-run, emptied first) and Redis port; ./run must be
# free to take port 8000 and the local model port. Stops ./run when done.
set -uo pipefail
cd "$(dirname "$0")/.."
QUESTION=${1:-"Does metformin reduce cardiovascular mortality in type 2 diabetes?"}
export VAR_DIR=${FIRST_RUN_VAR_DIR:-/tmp/first-run} HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export TRAIN_ON_FIRST_RUN=${TRAIN_ON_FIRST_RUN:-false} BACKGROUND_CORPUS=${BACKGROUND_CORPUS:-none}
export EMBEDDED_REDIS_PORT=${EMBEDDED_REDIS_PORT:-6420}
BASE=http://127.0.0.1:8000
rm -rf "$VAR_DIR" && mkdir -p "$VAR_DIR"
started=$(date +%s.%N)
./run > "$VAR_DIR/run.log" 2>&1 &
run_pid=$!
trap 'kill -INT $run_pid 2>/dev/null; wait $run_pid 2>/dev/null' EXIT
for _ in $(seq 1 400); do
  curl -sf "$BASE/readyz" 2>/dev/null | grep -q '"ready": *true' && break
  kill -0 $run_pid 2>/dev/null || { echo "./run stopped; see $VAR_DIR/run.log"; exit 1; }
  sleep 1
done
echo "ready after $(echo "$(date +%s.%N) - $started" | bc) s (log: $VAR_DIR/run.log)"
token=$(.venv/bin/python manage.py shell -c "
from django.contrib.auth.models import Group, User
from rest_framework.authtoken.models import Token
user, _ = User.objects.get_or_create(username='first-run-bench')
user.groups.add(Group.objects.get_or_create(name='clinician')[0])
print(Token.objects.get_or_create(user=user)[0].key)" 2>/dev/null | tail -1)
body=$(.venv/bin/python -c 'import json,sys; print(json.dumps({"question": sys.argv[1], "mode": "deep"}))' "$QUESTION")
asked=$(date +%s.%N)
id=$(curl -s -H "Authorization: Token $token" -H 'Content-Type: application/json' -d "$body" \
     "$BASE/api/v1/consultations" | .venv/bin/python -c 'import json,sys; print(json.load(sys.stdin)["id"])')
for _ in $(seq 1 600); do
  snapshot=$(curl -s -H "Authorization: Token $token" "$BASE/api/v1/consultations/$id")
  echo "$snapshot" | grep -q '"finished": *true' && break
  sleep 1
done
echo "deep consult $id ended after $(echo "$(date +%s.%N) - $asked" | bc) s"
echo "$snapshot" | .venv/bin/python -c '
import json, sys
d = json.load(sys.stdin)
print("status:", d.get("status"), "| display:", (d.get("display") or {}).get("label"))
for step in d.get("steps") or []:
    print("  %-8s %-8s %s s" % (step["kind"], step["status"], step.get("elapsed_s")))'
