#!/usr/bin/env bash
# Install everything the tests need, then run them: lint, types, and pytest.
# Works on a fresh Debian machine (as root, or with sudo available for apt-get).
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need_apt+=(nginx-light)
command -v aria2c >/dev/null 2>&1 || need_apt+=(aria2)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
# Proxies, as users have them: downloads are tested through tinyproxy and squid (HTTP and
# CONNECT, with Basic auth: squid's basic_ncsa_auth and an htpasswd made by openssl) and
# microsocks (SOCKS5).
command -v tinyproxy >/dev/null 2>&1 || need_apt+=(tinyproxy)
command -v squid >/dev/null 2>&1 || [ -x /usr/sbin/squid ] || need_apt+=(squid)
command -v microsocks >/dev/null 2>&1 || need_apt+=(microsocks)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
# The page is tested in a real browser: Debian's chromium, driven headless.
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
if [ ${#need_apt[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# The test tools (pytest, hypothesis, mypy, ruff, playwright's driver) and matplotlib, which
# mypy needs to check benchmarks/ (the `bench` extra).
python3 -m pip install -q --disable-pip-version-check -e '.[test,bench]'

python3 -m ruff check src tests benchmarks
python3 -m mypy
python3 -m pytest -q "$@"
