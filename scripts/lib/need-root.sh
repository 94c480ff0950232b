# Sourced by the scripts that need root, before they change directory:
#   . "$(dirname "$0")/lib/need-root.sh"; need_root "WHY" "$@"
# As root it returns. Otherwise it runs the calling script again through sudo, with the same
# arguments, or, where there is no sudo (root on a minimal image has none), stops with a message.

need_root() {
    local why=$1
    shift
    if ((EUID == 0)); then
        return 0
    fi
    local script name
    script=$(realpath "$0")
    name=$(basename "$(dirname "$script")")/$(basename "$script")
    if command -v sudo >/dev/null 2>&1; then
        exec sudo -- "$script" "$@"
    fi
    echo "$name: run as root ($why); sudo is not installed, so run it from a root shell" >&2
    exit 2
}
