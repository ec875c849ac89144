#!/usr/bin/env bash
# The host tools the build and the tests use, and the Debian packages that provide them: one table, read by
# `make setup` (install what is missing) and by every test target (name what is missing, and its package).
#
# Usage: bazel/hosttools.sh install            install every missing package (apt-get)
#        bazel/hosttools.sh check TARGET...    exit 1, naming each missing tool and its package, unless every
#                                              tool of the make targets is there
set -euo pipefail

# tool (a command in PATH, or an absolute path) | Debian package | make targets that need it ("all": every
# target) | "norec" to install without recommended packages
TOOLS='
git                                           | git                   | all
flock                                         | util-linux            | all
unshare                                       | util-linux            | all
/usr/bin/python3                              | python3               | all
dpkg-deb                                      | dpkg                  | all
debootstrap                                   | debootstrap           | all
wget                                          | wget                  | image image-test build
protoc                                        | protobuf-compiler     | check-generated protos generate
swtpm                                         | swtpm                 | go-test image-test cluster-test e2e-test fault-test kms-test ha-test terraform-test qemu-test build
containerd                                    | containerd            | go-test cluster-test e2e-test fault-test kms-test ha-test terraform-test build
ctr                                           | containerd            | go-test cluster-test e2e-test fault-test kms-test ha-test terraform-test
ip                                            | iproute2              | go-test cluster-test e2e-test fault-test kms-test ha-test terraform-test
mkfs.ext4                                     | e2fsprogs             | go-test cluster-test e2e-test fault-test kms-test ha-test terraform-test
openssl                                       | openssl               | go-test
/usr/lib/systemd/systemd-measure              | systemd               | go-test
systemd-repart                                | systemd               | go-test
/usr/lib/systemd/boot/efi/linuxx64.efi.stub   | systemd-boot-efi      | go-test
/usr/lib/systemd/boot/efi/systemd-bootx64.efi | systemd-boot-efi      | go-test
osslsigncode                                  | osslsigncode          | go-test
sbsign                                        | sbsigntool            | go-test
objcopy                                       | binutils              | go-test
veritysetup                                   | cryptsetup-bin        | go-test
mkfs.erofs                                    | erofs-utils           | go-test
mkfs.vfat                                     | dosfstools            | go-test image-test
mcopy                                         | mtools                | go-test image-test
qemu-system-x86_64                            | qemu-system-x86       | image-test qemu-test
/usr/share/OVMF/OVMF_CODE_4M.fd               | ovmf                  | image-test qemu-test
libvirtd                                      | libvirt-daemon-system | qemu-test | norec
virtlogd                                      | libvirt-daemon-system | qemu-test | norec
qemu-img                                      | qemu-utils            | qemu-test | norec
dnsmasq                                       | dnsmasq-base          | qemu-test | norec
xsltproc                                      | xsltproc              | qemu-test | norec
swtpm_setup                                   | swtpm-tools           | qemu-test | norec
swtpm_ioctl                                   | swtpm-tools           | qemu-test | norec
'

have() {
  case "$1" in
  /*) [ -e "$1" ] ;;
  *) command -v "$1" >/dev/null 2>&1 ;;
  esac
}

# rows prints "tool package targets flags" for every row.
rows() {
  echo "$TOOLS" | while IFS='|' read -r tool pkg targets flags; do
    tool=$(echo $tool)
    [ -n "$tool" ] || continue
    echo "$tool|$(echo $pkg)|$(echo $targets)|$(echo ${flags:-})"
  done
}

case "${1:-}" in
install)
  rec=() norec=()
  while IFS='|' read -r tool pkg _ flags; do
    have "$tool" && continue
    if [ "$flags" = norec ]; then norec+=("$pkg"); else rec+=("$pkg"); fi
  done < <(rows)
  mapfile -t rec < <(printf '%s\n' "${rec[@]}" | sort -u | sed '/^$/d')
  mapfile -t norec < <(printf '%s\n' "${norec[@]}" | sort -u | sed '/^$/d')
  [ ${#rec[@]} -gt 0 ] || [ ${#norec[@]} -gt 0 ] || exit 0
  echo "installing ${rec[*]} ${norec[*]}"
  apt-get update -qq
  [ ${#rec[@]} -eq 0 ] || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${rec[@]}" >/dev/null
  [ ${#norec[@]} -eq 0 ] || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${norec[@]}" >/dev/null
  ;;
check)
  shift
  [ $# -gt 0 ] || { echo "usage: $0 check TARGET..." >&2; exit 2; }
  missing=()
  while IFS='|' read -r tool pkg targets _; do
    needed=false
    for t in "$@"; do
      case " $targets " in *" $t "* | *" all "*) needed=true ;; esac
    done
    $needed || continue
    have "$tool" || missing+=("$tool (Debian package $pkg)")
  done < <(rows)
  if [ ${#missing[@]} -gt 0 ]; then
    echo "make $*: missing host tools:" >&2
    printf '  %s\n' "${missing[@]}" >&2
    echo "Install them with 'make setup' (or apt-get install the packages named)." >&2
    exit 1
  fi
  if [[ " $* " == *" go-test "* || " $* " == *" e2e-test "* || " $* " == *" fault-test "* || " $* " == *" kms-test "* || " $* " == *" ha-test "* || " $* " == *" terraform-test "* || " $* " == *" qemu-test "* ]] && ! have terraform; then
    echo "make $*: terraform is missing; 'make setup' builds v1.5.7 from the Go module proxy" >&2
    exit 1
  fi
  ;;
*)
  echo "usage: $0 install | check TARGET..." >&2
  exit 2
  ;;
esac
