#!/bin/busybox sh
# GET / : the version and the greeting from the task definition's environment.
# busybox httpd only honours a Status header on the first line of output.
. /app.env
# SLOW_MS: every answer waits that many milliseconds (a slow release that still passes its checks).
if [ "${SLOW_MS:-0}" -gt 0 ]; then
  /bin/busybox usleep $((SLOW_MS * 1000))
fi
# config: a bug only the production configuration shows (the task definition sets GREETING;
# the unit tests do not), so it passes its tests and is caught by the release's own checks.
# ERROR_PERCENT: that share of answers, drawn at random per request ($RANDOM), are 500s.
if [ "$BROKEN" = root ] || { [ "$BROKEN" = config ] && [ -n "$GREETING" ]; } \
   || [ $((RANDOM % 100)) -lt "${ERROR_PERCENT:-0}" ]; then
  printf 'Status: 500 Internal Server Error\r\nContent-Type: text/plain\r\nX-Revision: %s\r\n\r\n' "${APP_REVISION:-unknown}"
  printf 'sample-app %s: broken\n' "$VERSION"
  exit 0
fi
printf 'Content-Type: text/plain\r\nX-Revision: %s\r\n\r\n' "${APP_REVISION:-unknown}"
printf 'sample-app %s: %s\n' "$VERSION" "${GREETING:-hello}"
