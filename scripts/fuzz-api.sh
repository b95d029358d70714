#!/usr/bin/env bash
# The long fuzz run of the API: the suite's schemathesis test (tests/fuzz.rs) with many
# more cases per operation, on 127.0.0.1, through scripts/test.sh (which installs and
# starts what it needs). It prints schemathesis' summary and the API's answers by
# status; it stops by itself (at most FEEDSTREAM_TEST_FUZZ_SECONDS, 1 hour).
# Usage: scripts/fuzz-api.sh [CASES_PER_OPERATION, default 4000]
set -euo pipefail
export FEEDSTREAM_TEST_FUZZ_EXAMPLES="${1:-4000}"
export FEEDSTREAM_TEST_FUZZ_SECONDS="${FEEDSTREAM_TEST_FUZZ_SECONDS:-3600}"
exec "$(dirname "$0")/test.sh" --test fuzz -- --nocapture
