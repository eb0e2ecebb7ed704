#!/usr/bin/env bash
# Build (or reuse) the guest image of VM enclaves: a kernel and an initramfs whose /init
# is hobbes-guest-agent. Everything comes from Debian packages (the cloud kernel,
# busybox-static) and this repository; see docs/vm-guest.md.
#
#   scripts/vm-image.sh [--dir DIR] [--force] [--quiet]
#
# DIR (default ${HOBBES_VM_IMAGE:-/var/cache/hobbes/vm-image}) gets vmlinuz, initrd.img and
# image.json; debs/ there caches the downloaded packages. The image is rebuilt only when
# its inputs change (this script, the kernel package and version, busybox's version, the
# agent binary), so a second run takes seconds: cargo's no-op build and a hash. Prints DIR.
set -euo pipefail

dir=${HOBBES_VM_IMAGE:-/var/cache/hobbes/vm-image}
force=0
quiet=0
while (($#)); do
    case $1 in
        --dir) dir=${2:?--dir needs a directory}; shift 2 ;;
        --force) force=1; shift ;;
        --quiet) quiet=1; shift ;;
        -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "vm-image: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

say() { ((quiet)) || echo "vm-image: $*" >&2; }
die() { echo "vm-image: $*" >&2; exit 1; }

script=$(realpath "${BASH_SOURCE[0]}")
repo=$(dirname "$(dirname "$script")")
mkdir -p "$dir/debs"
dir=$(realpath "$dir")

# One build at a time per image directory.
exec 9>"$dir/.lock"
flock 9

# The modules the agent needs, in no particular order (their dependencies are added
# and ordered below). Optional ones (not in every kernel) end with '?'.
MODULES=(virtio virtio_ring virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci
         virtio_console fuse virtiofs 'pvpanic_pci?')

# --- the agent: a static glibc binary (no musl target here), built for an explicit target
# so its artifacts live in target/x86_64-unknown-linux-gnu/ apart from the host builds.
target=x86_64-unknown-linux-gnu
cargo_quiet=()
((quiet)) && cargo_quiet=(--quiet)
say "building the guest agent (static)"
(cd "$repo" && RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build "${cargo_quiet[@]}" --release -p vm-guest-agent --target "$target")
agent="$repo/target/$target/release/hobbes-guest-agent"
[[ -x $agent ]] || die "the agent was not built at $agent"
agent_sha=$(sha256sum "$agent" | cut -d' ' -f1)

# --- the packages: what apt would install now (local lists; run apt-get update to move on).
candidate() {
    apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ {print $2; exit}'
}
kernel_pkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null |
    awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
[[ -n $kernel_pkg ]] ||
    die "cannot resolve linux-image-cloud-amd64 to a kernel package (apt-get update?)"
kernel_version=$(candidate "$kernel_pkg")
busybox_version=$(candidate busybox-static)
[[ -n $kernel_version && $kernel_version != "(none)" ]] || die "no candidate for $kernel_pkg"
[[ -n $busybox_version && $busybox_version != "(none)" ]] || die "no candidate for busybox-static"

script_sha=$(sha256sum "$script" | cut -d' ' -f1)
inputs_hash=$(printf '%s\n' "$script_sha" "$kernel_pkg" "$kernel_version" \
    "$busybox_version" "$agent_sha" | sha256sum | cut -d' ' -f1)

json_field() { sed -n "s/^ *\"$1\": *\"\\(.*\\)\",\\{0,1\\}$/\\1/p" "$2"; }
if ((!force)) && [[ -f $dir/image.json && -f $dir/vmlinuz && -f $dir/initrd.img ]] &&
    [[ $(json_field inputs_hash "$dir/image.json") == "$inputs_hash" ]]; then
    say "up to date ($kernel_pkg $kernel_version)"
    echo "$dir"
    exit 0
fi

# --- download into the cache (apt-get download writes to the current directory).
# The deb of a given package and version, downloaded if not cached.
deb_of() {
    local pkg=$1 version=$2 f
    for f in "$dir/debs/${pkg}_"*.deb; do
        [[ -f $f && $(dpkg-deb -f "$f" Version) == "$version" ]] && { echo "$f"; return; }
    done
    say "downloading $pkg $version"
    # As root apt cannot drop to _apt for a directory _apt cannot write: harmless here,
    # and the warning would only worry people.
    (cd "$dir/debs" && apt-get download -qq "$pkg=$version" 2>&1 |
        grep -v -e 'unsandboxed as root' -e '^W: Download is performed' >&2 || true)
    for f in "$dir/debs/${pkg}_"*.deb; do
        [[ -f $f && $(dpkg-deb -f "$f" Version) == "$version" ]] && { echo "$f"; return; }
    done
    die "apt-get download $pkg=$version gave no package"
}
kernel_deb=$(deb_of "$kernel_pkg" "$kernel_version")
busybox_deb=$(deb_of busybox-static "$busybox_version")

# --- build in a scratch directory next to the outputs (so renames stay on one file system).
work=$(mktemp -d "$dir/.build.XXXXXX")
trap 'rm -rf "$work"' EXIT
say "unpacking $kernel_pkg and busybox-static"
dpkg-deb -x "$kernel_deb" "$work/kernel"
dpkg-deb -x "$busybox_deb" "$work/busybox"
releases=("$work/kernel/lib/modules/"*)
((${#releases[@]} == 1)) || die "$kernel_pkg has ${#releases[@]} module trees, expected one"
kernel_release=$(basename "${releases[0]}")
vmlinuz="$work/kernel/boot/vmlinuz-$kernel_release"
[[ -f $vmlinuz ]] || die "$kernel_pkg has no boot/vmlinuz-$kernel_release"

root="$work/root"
mkdir -p "$root"/{bin,dev,etc,proc,sys,run,usr,.hobbes/host,.hobbes/modules}
install -d -m 1777 "$root/tmp"
install -d -m 0700 "$root/root"
ln -s bin "$root/sbin"
# Empty /usr in the image: the host's /usr is bound over it (Setup), and these links
# make the host's dynamic loader and libraries appear where programs look for them.
ln -s usr/lib "$root/lib"
ln -s usr/lib64 "$root/lib64"
# The kernel opens /dev/console for init before devtmpfs is mounted over /dev; its
# built-in initramfs has the node too, this is in case that changes. Needs root.
if [[ $(id -u) -eq 0 ]]; then
    mknod -m 600 "$root/dev/console" c 5 1
fi

# --- kernel modules: index the tree by module name (file names may use '-' where the
# module's name has '_'), then add each wanted module after its `depends=` (from the
# .ko's .modinfo section: NUL-separated strings; there is no depmod here).
declare -A ko_of=()
while IFS= read -r -d '' ko; do
    name=$(basename "$ko" .ko)
    ko_of[${name//-/_}]=$ko
done < <(find "$work/kernel/lib/modules/$kernel_release" -name '*.ko' -print0)
((${#ko_of[@]})) || die "$kernel_pkg has no uncompressed modules (.ko); compressed ones need a loader change"
declare -A placed=()
order=()
place() {
    local m=$1 deps d
    [[ -n ${placed[$m]:-} ]] && return
    placed[$m]=1
    deps=$(tr '\0' '\n' < "${ko_of[$m]}" | sed -n 's/^depends=//p' | head -n1)
    for d in ${deps//,/ }; do
        [[ -n ${ko_of[$d]:-} ]] || die "module $m depends on $d, which $kernel_pkg lacks"
        place "$d"
    done
    order+=("$m")
}
for m in "${MODULES[@]}"; do
    name=${m%\?}
    if [[ -z ${ko_of[$name]:-} ]]; then
        [[ $m == *\? ]] && { say "no module $name in $kernel_release (optional, skipped)"; continue; }
        die "$kernel_pkg has no module $name"
    fi
    place "$name"
done
for m in "${order[@]}"; do
    cp "${ko_of[$m]}" "$root/.hobbes/modules/$m.ko"
    echo "$m.ko"
done > "$root/.hobbes/modules/load.list"

# --- busybox: one link per applet, all in /bin (/sbin is a link to it).
cp "$work/busybox/bin/busybox" "$root/bin/busybox"
for applet in $("$root/bin/busybox" --list); do
    [[ $applet == busybox || -e $root/bin/$applet ]] || ln -s busybox "$root/bin/$applet"
done

# --- the agent as /init, without its debug information (a smaller initramfs unpacks
# faster under TCG); image.json names the sha256 of the binary cargo built.
strip --strip-debug -o "$root/init" "$agent" 2>/dev/null || cp "$agent" "$root/init"
chmod 0755 "$root/init"

cat > "$root/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
cat > "$root/etc/group" <<'EOF'
root:x:0:
nogroup:x:65534:
EOF
echo hobbes-guest > "$root/etc/hostname"

say "packing the initramfs"
(cd "$root" && find . -mindepth 1 -print0 | LC_ALL=C sort -z |
    cpio --null --create --format=newc --owner=0:0 --quiet) | gzip -6 -n > "$work/initrd.img"
cp "$vmlinuz" "$work/vmlinuz"

cat > "$work/image.json" <<EOF
{
  "kernel_release": "$kernel_release",
  "kernel_package": "$kernel_pkg",
  "kernel_version": "$kernel_version",
  "busybox_version": "$busybox_version",
  "agent_sha256": "$agent_sha",
  "inputs_hash": "$inputs_hash",
  "built_at": "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
}
EOF

# --- publish: image.json goes first and comes back last, so while the kernel and the
# initramfs are swapped there is no image, never a mixed one.
rm -f "$dir/image.json"
mv -f "$work/vmlinuz" "$dir/vmlinuz"
mv -f "$work/initrd.img" "$dir/initrd.img"
mv -f "$work/image.json" "$dir/image.json"
say "built $kernel_pkg $kernel_version, busybox $busybox_version, $(du -h "$dir/initrd.img" | cut -f1) initramfs"
echo "$dir"
