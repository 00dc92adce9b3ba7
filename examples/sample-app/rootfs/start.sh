# Entry point, run as `/bin/busybox sh /start.sh`: a scratch image has no
# /bin/sh, so every tool is called through busybox explicitly.
. /app.env
PORT="${PORT:-8080}"
case "$BROKEN" in
  health) /bin/busybox rm -f /www/health ;;  # /health -> 404: health checks fail
  root|config|"") ;;                         # root: index.cgi answers 500; config: only with GREETING set
  *) echo "sample-app: unknown BROKEN=$BROKEN (use empty, root, health or config)" >&2; exit 2 ;;
esac
# SLOW_MS: GET / waits that many milliseconds before answering; ERROR_PERCENT: that share of its answers,
# drawn at random per request, are 500s. Empty means 0.
case "${SLOW_MS:-0}" in
  *[!0-9]*) echo "sample-app: SLOW_MS=$SLOW_MS is not a whole number of milliseconds (e.g. 300)" >&2; exit 2 ;;
esac
case "${ERROR_PERCENT:-0}" in
  *[!0-9]*) echo "sample-app: ERROR_PERCENT=$ERROR_PERCENT is not a whole percentage from 0 to 100 (e.g. 3)" >&2; exit 2 ;;
esac
if [ "${ERROR_PERCENT:-0}" -gt 100 ]; then
  echo "sample-app: ERROR_PERCENT=$ERROR_PERCENT is over 100 (use 0 to 100)" >&2; exit 2
fi
notes="${BROKEN:+ (broken: $BROKEN)}"
[ "${SLOW_MS:-0}" -gt 0 ] && notes="$notes (slow: $SLOW_MS ms)"
[ "${ERROR_PERCENT:-0}" -gt 0 ] && notes="$notes (errors: $ERROR_PERCENT %)"
echo "sample-app $VERSION listening on 127.0.0.1:$PORT$notes"
exec /bin/busybox httpd -f -v -p "127.0.0.1:$PORT" -h /www
