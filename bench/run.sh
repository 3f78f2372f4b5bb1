#!/bin/sh
# Install what the benchmark needs, then run it: bench/run.sh [--quick] [--runs N] ...
# Debian's postfix package brings Postfix, smtp-sink and smtp-source; it is
# installed without configuration (the benchmark writes its own instance).
set -eu
cd "$(dirname "$0")/.."
if ! command -v smtp-sink >/dev/null 2>&1 || ! command -v postfix >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    apt-get update -qq
    apt-get install -y -qq postfix >/dev/null
fi
python3 -m pip install -q -e '.[bench]'
exec python3 -m bench "$@"
