# Entry point, run as `/bin/busybox sh /start.sh`: a scratch image has no
# /bin/sh, so every tool is called through busybox explicitly.
. /app.env
PORT="${PORT:-8080}"
case "$BROKEN" in
  health) /bin/busybox rm -f /www/health ;;  # /health -> 404: health checks fail
  root|config|"") ;;                         # root: index.cgi answers 500; config: only with GREETING set
  *) echo "sample-app: unknown BROKEN=$BROKEN (use empty, root, health or config)" >&2; exit 2 ;;
esac
echo "sample-app $VERSION listening on 127.0.0.1:$PORT${BROKEN:+ (broken: $BROKEN)}"
exec /bin/busybox httpd -f -v -p "127.0.0.1:$PORT" -h /www
