#!/bin/sh
# Container entrypoint: verify the bundle, then serve it. Extra arguments go to `domain-lm serve`.
#
#   DOMAIN_LM_BUNDLE          bundle directory (mounted read-only); verified before anything is served
#   DOMAIN_LM_BUNDLE_SHA256   optional: expected SHA-256 of the bundle's MANIFEST.sha256
#   DOMAIN_LM_MODEL           without a bundle: a model directory (not verified)
#   DOMAIN_LM_TEMPLATES_DIR   templates directory (default: the bundle's templates/)
#   DOMAIN_LM_ENGINE          vllm | hf | auto (default vllm in the images)
#   DOMAIN_LM_PORT            listening port (default 8000)
#   DOMAIN_LM_TENSOR_PARALLEL_SIZE   GPUs to shard the model over (vLLM), default 1
#   DOMAIN_LM_KV_CACHE_GIB    vLLM KV cache size in GiB (CPU servers)
#   DOMAIN_LM_SERVE_ARGS      more `domain-lm serve` options, e.g. "--max-queue 32 --max-model-len 4096"
#   DOMAIN_LM_BUNDLE_PUBLIC_KEY  trusted public key (file or directory) the bundle must be signed with
#   DOMAIN_LM_BUNDLE_ALLOW_UNSIGNED=true  serve an unsigned bundle (development only)
# The service reads the rest from DOMAIN_LM_* variables itself (services/settings.py):
# DOMAIN_LM_API_KEYS_FILE, DOMAIN_LM_API_KEYS, DOMAIN_LM_AUDIT_LOG, DOMAIN_LM_TEMPLATE_STORE (runtime
# templates), DOMAIN_LM_DOCS=false, DOMAIN_LM_AUTH=false (development only).
set -eu

PORT="${DOMAIN_LM_PORT:-8000}"
ENGINE="${DOMAIN_LM_ENGINE:-auto}"

if [ "${1:-}" = "domain-lm" ] || [ "${1:-}" = "sh" ] || [ "${1:-}" = "python" ]; then
  exec "$@"  # an explicit command (e.g. `docker run IMAGE domain-lm bundle verify /models/x`)
fi

set -- --engine "$ENGINE" --host 0.0.0.0 --port "$PORT" "$@"
if [ -n "${DOMAIN_LM_TENSOR_PARALLEL_SIZE:-}" ]; then
  set -- "$@" --tensor-parallel-size "$DOMAIN_LM_TENSOR_PARALLEL_SIZE"
fi
if [ -n "${DOMAIN_LM_KV_CACHE_GIB:-}" ]; then
  set -- "$@" --kv-cache-gib "$DOMAIN_LM_KV_CACHE_GIB"
fi
if [ -n "${DOMAIN_LM_TEMPLATES_DIR:-}" ]; then
  set -- --templates "$DOMAIN_LM_TEMPLATES_DIR" "$@"
fi
# Word splitting of DOMAIN_LM_SERVE_ARGS is intended: it holds several options.
# shellcheck disable=SC2086
set -- "$@" ${DOMAIN_LM_SERVE_ARGS:-}

if [ -n "${DOMAIN_LM_BUNDLE:-}" ]; then
  # `bundle serve` checks the signature, re-hashes every file against MANIFEST.sha256 and refuses a tampered bundle.
  exec domain-lm bundle serve "$DOMAIN_LM_BUNDLE" "$@"
fi
if [ -z "${DOMAIN_LM_MODEL:-}" ]; then
  echo "domain-lm: set DOMAIN_LM_BUNDLE (a verified bundle, recommended) or DOMAIN_LM_MODEL" >&2
  exit 2
fi
exec domain-lm serve --model "$DOMAIN_LM_MODEL" "$@"
