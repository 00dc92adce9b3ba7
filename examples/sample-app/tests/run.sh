#!/bin/sh
# The sample app's tests: plain sh, a JUnit XML report at $1 (CodeBuild's JUNITXML).
# They read the release in app.env and run the CGI as busybox httpd would.
out=${1:-reports/junit.xml}
mkdir -p "$(dirname "$out")"
cases=""; failed=0; total=0
record() {  # name, message (empty: passed)
  total=$((total + 1))
  if [ -z "$2" ]; then
    cases="$cases<testcase classname=\"sample-app\" name=\"$1\"/>"
    echo "PASS $1"
  else
    failed=$((failed + 1))
    cases="$cases<testcase classname=\"sample-app\" name=\"$1\"><failure message=\"$2\"/></testcase>"
    echo "FAIL $1: $2"
  fi
}
. ./app.env
[ -n "$VERSION" ] && record version_is_set "" || record version_is_set "app.env has no VERSION"
case "$BROKEN" in
  ""|root|health|config) record broken_mode_is_known "" ;;
  *) record broken_mode_is_known "BROKEN=$BROKEN is not empty, root, health or config" ;;
esac
[ "$(cat rootfs/www/health)" = ok ] && record health_answers_ok "" || record health_answers_ok "rootfs/www/health is not ok"
[ "$BROKEN" != health ] && record health_is_served "" || record health_is_served "BROKEN=health removes /health"
# the page as the release's code answers it: SLOW_MS and ERROR_PERCENT are faults only a running release shows
# (like BROKEN=config), so the tests read app.env with both at 0
env_copy="$(dirname "$out")/app.env.test"
{ cat ./app.env; echo; echo SLOW_MS=0; echo ERROR_PERCENT=0; } > "$env_copy"
first=$(sed "s#/app.env#$env_copy#" rootfs/www/cgi-bin/index.cgi | sh | head -1 | tr -d '\r')
rm -f "$env_copy"
case "$first" in
  Status:*) record root_answers_200 "GET / answers ${first#Status: }" ;;
  *) record root_answers_200 "" ;;
esac
printf '<?xml version="1.0"?>\n<testsuites><testsuite name="sample-app" tests="%d" failures="%d">%s</testsuite></testsuites>\n' \
  "$total" "$failed" "$cases" > "$out"
echo "$((total - failed)) passed, $failed failed"
[ "$failed" -eq 0 ]
