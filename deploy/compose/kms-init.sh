#!/bin/sh
# One-shot init of docker-compose.yml: creates the KMS key the admin API seals provider
# keys under, with the alias alias/securegate, in moto's KMS API (a stand-in for AWS KMS;
# AWS_ENDPOINT_URL_KMS points the AWS CLI at it). Idempotent: an existing alias is kept.
set -eu
for _ in $(seq 1 30); do
  aws kms list-keys >/dev/null 2>&1 && break
  sleep 1
done
if aws kms describe-key --key-id alias/securegate >/dev/null 2>&1; then
  echo "kms-init: alias/securegate exists"
  exit 0
fi
key_id=$(aws kms create-key --description "SecureGate demo (moto)" --query KeyMetadata.KeyId --output text)
aws kms create-alias --alias-name alias/securegate --target-key-id "$key_id"
echo "kms-init: created $key_id as alias/securegate"
