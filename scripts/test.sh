#!/usr/bin/env bash
# Runs every test: unit tests, the store conformance suite on SQLite and PostgreSQL, the CLI
# tests and the end-to-end flow. Installs and starts what the tests need first:
#   - aiosmtpd (Python), the real SMTP server the end-to-end test sends to, and dkimpy, which
#     verifies DKIM signatures on what it received;
#   - PostgreSQL on 127.0.0.1:5432 (started if stopped, installed if missing);
#   - headless Chromium and chromedriver (Debian packages), for the console's browser test.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! python3 -c 'import aiosmtpd, dkim' 2>/dev/null; then
  echo "installing aiosmtpd (SMTP server for the end-to-end test) and dkimpy (checks DKIM as a receiver would)"
  python3 -m pip install --quiet --disable-pip-version-check aiosmtpd dkimpy
fi

if ! command -v chromedriver >/dev/null || ! [ -x /usr/bin/chromium ]; then
  echo "installing chromium and chromium-driver (the console's browser tests)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null
fi

pg_up() { (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null; }
if ! pg_up; then
  if ! command -v pg_ctlcluster >/dev/null; then
    echo "installing PostgreSQL"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq postgresql >/dev/null
    ver=$(ls /etc/postgresql | sort -V | tail -1)
    sed -i 's/^\(host.*127.0.0.1\/32 *\)[a-z0-9-]*$/\1trust/' "/etc/postgresql/$ver/main/pg_hba.conf"
  fi
  echo "starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -1)" main start || true
  for _ in $(seq 1 50); do pg_up && break; sleep 0.2; done
  pg_up || { echo "PostgreSQL did not start on 127.0.0.1:5432" >&2; exit 1; }
fi
export BROADCAST_TEST_POSTGRES_URL=${BROADCAST_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast
else
  cargo test --workspace --no-fail-fast --lib --bins --tests
fi
# nextest does not run doc tests.
cargo test --workspace --doc
