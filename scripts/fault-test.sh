#!/usr/bin/env bash
# The crash and fault harness at full size: 200,000 events (CI runs 20,000 as part of
# scripts/test.sh). Any argument is passed to the test binary, e.g. --nocapture is on.
# Size and seed: FEEDSTREAM_FAULT_EVENTS, FEEDSTREAM_FAULT_KILLS, FEEDSTREAM_TEST_SEED.
set -euo pipefail
export FEEDSTREAM_FAULT_EVENTS="${FEEDSTREAM_FAULT_EVENTS:-200000}"
exec "$(dirname "$0")/test.sh" --test faults -- --nocapture "$@"
