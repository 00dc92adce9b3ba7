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
[ "$(cat www/health)" = ok ] && record health_answers_ok "" || record health_answers_ok "www/health is not ok"
[ "$BROKEN" != health ] && record health_is_served "" || record health_is_served "BROKEN=health removes /health"
first=$(sed 's#/app.env#./app.env#' www/cgi-bin/index.cgi | sh | head -1 | tr -d '\r')
case "$first" in
  Status:*) record root_answers_200 "GET / answers ${first#Status: }" ;;
  *) record root_answers_200 "" ;;
esac
printf '<?xml version="1.0"?>\n<testsuites><testsuite name="sample-app" tests="%d" failures="%d">%s</testsuite></testsuites>\n' \
  "$total" "$failed" "$cases" > "$out"
echo "$((total - failed)) passed, $failed failed"
[ "$failed" -eq 0 ]
