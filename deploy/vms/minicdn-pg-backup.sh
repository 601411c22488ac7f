#!/bin/sh
# Nightly logical backup of the minicdn database (run by minicdn-pg-backup.timer on db-2, the standby,
# so the primary does no extra work): pg_dump's custom format into BACKUP_DIR, checked by reading its
# table of contents back, then dumps older than KEEP_DAYS are removed. Copy BACKUP_DIR off the machine
# (BACKUP_COPY_COMMAND, run with the new file's path) so losing the VM loses no backup.
#   BACKUP_DATABASE_URL   the database to dump (the unit: the standby's own, over its local socket);
#                         default MINICDN_DATABASE_URL
#   BACKUP_DIR            where dumps go (default /var/backups/minicdn)
#   KEEP_DAYS             days of dumps kept here (default 14)
#   BACKUP_COPY_COMMAND   optional, e.g. "rclone copy --immutable" or "aws s3 cp" plus a destination
set -eu
url="${BACKUP_DATABASE_URL:-${MINICDN_DATABASE_URL:-}}"
[ -n "$url" ] || { echo "set BACKUP_DATABASE_URL (or MINICDN_DATABASE_URL)" >&2; exit 2; }
BACKUP_DIR="${BACKUP_DIR:-/var/backups/minicdn}"
KEEP_DAYS="${KEEP_DAYS:-14}"
PG_BIN="${PG_BIN:-}"   # a directory holding pg_dump and pg_restore of the server's major version

stamp=$(date -u +%Y%m%dT%H%M%SZ)
target="$BACKUP_DIR/minicdn-$stamp.dump"
mkdir -p "$BACKUP_DIR"
umask 077   # the dump holds key hashes and app data: owner only
trap 'rm -f "$target.partial"' EXIT   # a failed run leaves nothing that looks like a dump
"${PG_BIN:+$PG_BIN/}pg_dump" --format=custom --compress=6 --file="$target.partial" "$url"
# A dump that cannot be listed is not a backup: fail (the unit fails, your alerting sees it).
"${PG_BIN:+$PG_BIN/}pg_restore" --list "$target.partial" > /dev/null
mv "$target.partial" "$target"
if [ -n "${BACKUP_COPY_COMMAND:-}" ]; then
  # shellcheck disable=SC2086  # the command is words on purpose
  $BACKUP_COPY_COMMAND "$target"
fi
find "$BACKUP_DIR" -maxdepth 1 -name 'minicdn-*.dump' -mtime +"$KEEP_DAYS" -delete
echo "$target"
