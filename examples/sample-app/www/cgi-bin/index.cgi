#!/bin/busybox sh
# GET / : the version and the greeting from the task definition's environment.
# busybox httpd only honours a Status header on the first line of output.
. /app.env
# config: a bug only the production configuration shows (the task definition sets GREETING;
# the unit tests do not), so it passes its tests and is caught by the release's own checks.
if [ "$BROKEN" = root ] || { [ "$BROKEN" = config ] && [ -n "$GREETING" ]; }; then
  printf 'Status: 500 Internal Server Error\r\nContent-Type: text/plain\r\nX-Revision: %s\r\n\r\n' "${APP_REVISION:-unknown}"
  printf 'sample-app %s: broken\n' "$VERSION"
  exit 0
fi
printf 'Content-Type: text/plain\r\nX-Revision: %s\r\n\r\n' "${APP_REVISION:-unknown}"
printf 'sample-app %s: %s\n' "$VERSION" "${GREETING:-hello}"
