#!/usr/bin/env bash
# The test command: unit tests and integration tests (real binaries on 127.0.0.1).
# Integration tests start their own agent and central store processes; two at a time keeps
# a 2-core machine responsive.
set -euo pipefail
cd "$(dirname "$0")/.."
# The S3 archive tests run against a real SeaweedFS server (tests/store_s3.rs).
if [ -z "${LOGVEIL_WEED:-}" ]; then
    LOGVEIL_WEED=$(./scripts/weed.sh)
    export LOGVEIL_WEED
fi
cargo build --locked --bins
cargo test --locked -- --test-threads=2
