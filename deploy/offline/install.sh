#!/usr/bin/env bash
# Install domain-lm on an air-gapped machine from a wheelhouse built by build_wheelhouse.py.
#
#   bash install.sh WHEELHOUSE [VENV]        (VENV defaults to /opt/domain-lm/venv)
#
# Nothing is downloaded: pip runs with --no-index and --require-hashes, so every wheel must be in
# the wheelhouse and match its SHA-256 in requirements.lock. SHA256SUMS is checked first, so a
# corrupted copy fails before pip starts. Set PYTHON to choose the interpreter (default python3).
set -euo pipefail

WHEELHOUSE=${1:?usage: install.sh WHEELHOUSE [VENV]}
VENV=${2:-/opt/domain-lm/venv}
PYTHON=${PYTHON:-python3}
WHEELHOUSE=$(cd "$WHEELHOUSE" && pwd)

echo "checking ${WHEELHOUSE}/SHA256SUMS"
(cd "$WHEELHOUSE" && sha256sum --check --strict --quiet SHA256SUMS)

"$PYTHON" -m venv "$VENV"
# --no-deps: the lock already lists the whole dependency closure, so pip never needs to resolve.
PIP_CONFIG_FILE=/dev/null "$VENV/bin/python" -m pip install --disable-pip-version-check --no-input \
  --no-index --find-links "$WHEELHOUSE" --require-hashes --only-binary=:all: --no-deps \
  -r "$WHEELHOUSE/requirements.lock"

if grep -q '^# PARTIAL' "$WHEELHOUSE/requirements.lock"; then
  echo "partial wheelhouse: skipping pip check (the missing dependencies must come from elsewhere)"
else
  # Packages left out on purpose (--exclude, e.g. torchvision beside CPU torch) are not errors.
  excluded=$(sed -n 's/^# EXCLUDED: //p' "$WHEELHOUSE/requirements.lock" | tr ' ' '\n' | sed '/^$/d')
  problems=$("$VENV/bin/python" -m pip check 2>&1 | grep -v '^No broken requirements' || true)
  if [ -n "$excluded" ] && [ -n "$problems" ]; then
    problems=$(printf '%s\n' "$problems" | grep -v -i -w -F -f <(printf '%s\n' "$excluded") || true)
  fi
  if [ -n "$problems" ]; then
    printf 'pip check found broken requirements:\n%s\n' "$problems" >&2
    exit 1
  fi
fi
echo "installed domain-lm into ${VENV}; next: ${VENV}/bin/domain-lm bundle verify /srv/domain-lm/models/<bundle>"
