# Shared by scripts/example.sh and scripts/test.sh (sourced, not run): installs the C libraries peftkit links
# (zlib, OpenBLAS, json-c and pkg-config to find them) when they are missing, then checks the Swift toolchain.

peftkit_require_packages() {
    local missing=()
    local package
    for package in zlib1g-dev libopenblas-dev libjson-c-dev pkg-config; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "peftkit: installing ${missing[*]}" >&2
        local sudo=""
        [ "$(id -u)" -eq 0 ] || sudo="sudo"
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    if ! command -v swift >/dev/null 2>&1; then
        echo "peftkit: the Swift toolchain (swift) is not on PATH; install Swift 6 first" >&2
        return 1
    fi
}
