#!/usr/bin/env bash
# Print the newest supported CPython (3.13, then 3.12, then 3.11) found as python3.X on PATH
# or under pyenv (whose shims answer only for the selected version), else python3 if it is
# supported; print nothing and exit 1 if none is. With arguments (e.g. `3.11`), only those.
set -u
root=${PYENV_ROOT:-$HOME/.pyenv}
given=$#
[ "$given" -gt 0 ] || set -- 3.13 3.12 3.11
for v in "$@"; do
  for p in "python$v" $(ls -d "$root"/versions/"$v".*/bin/python"$v" 2>/dev/null | sort -V -r); do
    if "$p" -c "import sys; sys.exit(sys.version_info[:2] != (${v%%.*}, ${v#*.}))" >/dev/null 2>&1; then
      command -v "$p"; exit 0
    fi
  done
done
if [ "$given" -eq 0 ] && python3 -c 'import sys; sys.exit(not ((3, 11) <= sys.version_info[:2] < (3, 14)))' 2>/dev/null; then
  command -v python3; exit 0
fi
exit 1
