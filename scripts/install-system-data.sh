#!/usr/bin/env bash
# Install the Debian packages that carry offshelf's offline data (datasets, photos), and the Chromium the
# service's browser test drives (Playwright with executable_path=/usr/bin/chromium, never `playwright install`).
# g++ builds hnswlib (a benchmark peer in the test extra; PyPI has no wheel of it).
# Needs root and apt-get; does nothing when every package is already installed.
set -euo pipefail
packages=(dataset-fashion-mnist openclipart-png gnome-backgrounds plasma-workspace-wallpapers chromium g++)
missing=()
for pkg in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null 2>&1 || [ "$(id -u)" -ne 0 ]; then
    echo "offshelf: please install the Debian packages: ${missing[*]} (needs root and apt-get)" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}"
