#!/usr/bin/env bash
# Release check for an offline install: with NO network (a fresh network namespace, loopback only),
# build a bundle of a tiny random model, serve it through `domain-lm bundle serve` with an API key
# on each engine, and call three tasks over HTTP. Needs root (unshare -n).
#
#   bash deploy/offline/install.sh wheelhouse /tmp/dlm-venv
#   sudo bash deploy/offline/airgap_smoke.sh /tmp/dlm-venv task_templates [hf vllm]
set -euo pipefail

VENV=$(cd "${1:?usage: airgap_smoke.sh VENV TEMPLATES [ENGINE...]}" && pwd)
TEMPLATES=$(cd "${2:?usage: airgap_smoke.sh VENV TEMPLATES [ENGINE...]}" && pwd)
shift 2
ENGINES=${*:-hf vllm}

if [ "${DOMAIN_LM_IN_NETNS:-}" != 1 ]; then
  exec unshare --net env DOMAIN_LM_IN_NETNS=1 bash "$0" "$VENV" "$TEMPLATES" $ENGINES
fi
ip link set lo up
V=$VENV/bin
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"

if "$V/python" -c "import urllib.request; urllib.request.urlopen('https://example.com', timeout=3)" 2>/dev/null; then
  echo "error: this namespace has outbound network; the check would prove nothing" >&2
  exit 1
fi
"$V/python" -c "from domain_lm.models.tiny import build_tiny_model; build_tiny_model('tiny')" >/dev/null 2>&1
"$V/domain-lm" bundle keygen --out keys >/dev/null
"$V/domain-lm" bundle build --model tiny --templates "$TEMPLATES" --out bundle --sign-key keys/bundle-signing.key > bundle.sha256 2>/dev/null
out=$("$V/domain-lm" serve keygen --id airgap-smoke --tasks '*')
KEY=$(echo "$out" | sed -n 's/^key: *//p')
ENTRY=$(echo "$out" | sed -n 's/^entry: *//p')

status=0
for engine in $ENGINES; do
  start=$(date +%s)
  DOMAIN_LM_API_KEYS="[$ENTRY]" DOMAIN_LM_AUDIT_LOG="$WORK/audit-$engine.jsonl" \
    "$V/domain-lm" bundle serve bundle --public-key keys/bundle-signing.pub --manifest-sha256 "$(cat bundle.sha256)" --engine "$engine" \
    --port 8123 --gpu-memory-utilization 0.05 --max-model-len 512 > "serve-$engine.log" 2>&1 &
  pid=$!
  ready=0
  for _ in $(seq 1 300); do
    if "$V/python" -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8123/readyz', timeout=2)" 2>/dev/null; then
      ready=1; break
    fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 1
  done
  if [ "$ready" != 1 ]; then
    echo "FAIL $engine: not ready; last log lines:"; tail -20 "serve-$engine.log"; status=1
  else
    echo "$engine ready after $(( $(date +%s) - start ))s"
    "$V/python" - "$KEY" <<'PY' || status=1
import json, sys, time, urllib.error, urllib.request

key = sys.argv[1]
cases = {"sentiment": {"text": "Net interest income rose 8% on higher card balances."},
         "business_line": {"text": "The customer asked to raise the credit card limit."},
         "entities": {"text": "HSBC opened an office in London."}}
failed = False
for task, inputs in cases.items():
    req = urllib.request.Request(f"http://127.0.0.1:8123/v1/tasks/{task}", data=json.dumps({"input": inputs}).encode(),
                                 headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    t = time.time()
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            body = json.loads(r.read())
            print(f"  ok   {task}: {r.status} output={json.dumps(body['output'])[:60]} in {(time.time() - t) * 1000:.0f} ms")
    except urllib.error.HTTPError as e:
        print(f"  FAIL {task}: {e.code} {e.read()[:200]!r}")
        failed = True
sys.exit(1 if failed else 0)
PY
  fi
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
done
exit $status
