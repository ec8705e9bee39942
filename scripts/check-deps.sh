#!/usr/bin/env bash
# Keeps the dependency rules of DESIGN.md §2 true:
#   core ← {collect, triage, store, distribute} ← server ← tests
# - the four middle crates depend on no other broadcast crate but core;
# - core and triage do no I/O: no async runtime, database, HTTP or mail crates in their tree;
# - core and triage read no clock and no environment (checked in their source).
# Exits non-zero naming every forbidden edge it finds.
set -euo pipefail
cd "$(dirname "$0")/.."

fail=0
deps_of() { # normal (non-dev) dependency tree of a package, one crate name per line
  cargo tree -p "$1" -e normal --prefix none --format '{p}' 2>/dev/null | awk '{print $1}' | sort -u
}
forbid() { # package, crate...
  local pkg=$1; shift
  local tree; tree=$(deps_of "$pkg")
  for bad in "$@"; do
    if grep -qx "$bad" <<<"$tree"; then
      echo "forbidden dependency: $pkg depends on $bad" >&2
      fail=1
    fi
  done
}

io_crates=(tokio sqlx reqwest lettre axum hyper mio)
middle=(broadcast-collect broadcast-triage broadcast-store broadcast-distribute)

forbid broadcast-core "${io_crates[@]}" "${middle[@]}" broadcast-server
forbid broadcast-triage "${io_crates[@]}" broadcast-collect broadcast-store broadcast-distribute broadcast-server
for m in "${middle[@]}"; do
  others=()
  for o in "${middle[@]}"; do [[ $o != "$m" ]] && others+=("$o"); done
  forbid "$m" "${others[@]}" broadcast-server
done

# No clock, environment or randomness in the pure crates (comments and doc text excepted).
for dir in crates/core/src crates/triage/src; do
  if grep -rnE 'Utc::now|Local::now|SystemTime::now|Instant::now|std::env::var|env::var\(|rand::' "$dir" \
      | grep -vE '^[^:]+:[0-9]+:\s*//'; then
    echo "forbidden: clock, environment or randomness in $dir (pass them in instead)" >&2
    fail=1
  fi
done

if [[ $fail -ne 0 ]]; then
  echo "dependency rules violated (see DESIGN.md §2)" >&2
  exit 1
fi
echo "dependency rules hold"
