#!/usr/bin/env bash
# One closing line for a Swift test run from its xUnit report ("swift: N passed, N failed,
# N skipped"): XCTest's --parallel mode prints no summary of its own.
set -euo pipefail
report=${1:?usage: test-summary.sh XUNIT.xml}
if [ ! -s "$report" ]; then
    echo "test-summary: $report: no xUnit report (the test run did not finish)" >&2
    exit 1
fi
# A case is counted once, however many assertions in it failed.
read -r total failed skipped < <(awk '
    /<testcase /      { total++; marked = 0 }
    /<failure|<error/ { if (!marked) { failed++; marked = 1 } }
    /<skipped/        { if (!marked) { skipped++; marked = 1 } }
    END               { print total + 0, failed + 0, skipped + 0 }' "$report")
echo "swift: $((total - failed - skipped)) passed, $failed failed, $skipped skipped"
