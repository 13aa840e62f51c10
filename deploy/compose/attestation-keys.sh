#!/bin/sh
# One-shot helper of docker-compose.yml around `securegate keygen` (which refuses to
# overwrite a key): keeps the edges' attestation key pair stable across `docker compose
# up` runs, in the `attestation` volume.
#   prepare: make an empty staging directory the nonroot user (65532) may write to
#   install: move the new pair into place unless a pair is already there
set -eu
case "${1:-}" in
  prepare)
    mkdir -p /keys/staging
    rm -f /keys/staging/attestation.key /keys/staging/attestation.pub
    chown 65532:65532 /keys /keys/staging
    ;;
  install)
    if [ -s /keys/attestation.key ] && [ -s /keys/attestation.pub ]; then
      echo "attestation keys: keeping the existing pair"
    else
      mv -f /keys/staging/attestation.key /keys/staging/attestation.pub /keys/
      echo "attestation keys: installed a new pair"
    fi
    rm -f /keys/staging/attestation.key /keys/staging/attestation.pub
    ;;
  *)
    echo "usage: $0 prepare|install" >&2
    exit 2
    ;;
esac
