#!/usr/bin/env bash
# Headless Chromium for the dashboard's browser tests (tests/test_dashboard_browser.py), from Debian's
# own package: test machines have no Chromium, and tools that download their own browser (npx
# playwright install) cannot reach their servers here. Installs it with apt-get when missing and we
# may (root, or sudo without a password); otherwise says why, and the browser tests skip saying so.
# Prints the browser's path on success.
set -euo pipefail
for candidate in "${OTRULES_CHROMIUM:-}" /usr/bin/chromium /usr/bin/chromium-browser; do
  if [[ -n "$candidate" && -x "$candidate" ]]; then echo "$candidate"; exit 0; fi
done
if ! command -v apt-get >/dev/null 2>&1; then
  echo "no Chromium, and no apt-get to install Debian's chromium package: set OTRULES_CHROMIUM" >&2; exit 1
fi
if [[ $(id -u) -eq 0 ]]; then SUDO=(); elif sudo -n true 2>/dev/null; then SUDO=(sudo -n); else
  echo "no Chromium, and installing Debian's chromium package needs root (or sudo without a password)" >&2; exit 1
fi
echo "installing Debian's chromium package (once)" >&2
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -qq >&2
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >&2
echo /usr/bin/chromium
