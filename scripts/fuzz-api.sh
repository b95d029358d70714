#!/usr/bin/env bash
# The long fuzz run of the API: the suite's schemathesis test (tests/fuzz.rs) with many
# more cases per operation, on 127.0.0.1, through scripts/test.sh (which installs and
# starts what it needs). It prints schemathesis' summary and the API's answers by
# status; it stops by itself (at most FEEDSTREAM_TEST_FUZZ_SECONDS, 2 hours). On 2 cores
# schemathesis sends about 40 requests a second: 400 cases gave 4,316 requests in
# 108 s, so the default of 10,000 should be about 100,000 requests and 45 minutes.
# Usage: scripts/fuzz-api.sh [CASES_PER_OPERATION, default 10000]
set -euo pipefail
export FEEDSTREAM_TEST_FUZZ_EXAMPLES="${1:-10000}"
export FEEDSTREAM_TEST_FUZZ_SECONDS="${FEEDSTREAM_TEST_FUZZ_SECONDS:-7200}"
exec "$(dirname "$0")/test.sh" --test fuzz -- --nocapture
