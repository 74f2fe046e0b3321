#!/usr/bin/env bash
# Build the local Docker images used by the integration tests, without any
# container registry: binaries come from Debian packages (apt-get download +
# dpkg -x), images are `FROM scratch` + the binary + the glibc libs it needs.
#
#   constructr-test/etcd:<ver>    etcd-server + etcd-client from trixie (3.5.x),
#                                 falling back to bookworm (3.4.23)
#   constructr-test/consul:<ver>  consul from bullseye (1.8.7)
#   constructr-test/serf:<ver>    serf from trixie (0.10.1)
#   constructr-test/zookeeper:<ver>  ZooKeeper from bookworm (3.8.0) with its JRE, a
#                                 debootstrapped Debian (Java needs a whole system);
#                                 /usr/local/bin/zk-start runs one server (ZK_ID +
#                                 ZK_SERVERS: a member of an ensemble)
#   constructr-test/systemd:trixie  a whole Debian trixie (debootstrap, no registry)
#                                 with systemd as PID 1, sshd and python3: the host
#                                 the Ansible role is tested against
#
# Idempotent: an image that already exists is not rebuilt unless FORCE=1.
# The machine's apt configuration is never modified (temporary sources/lists).
#
# Output: `export CONSTRUCTR_{ETCD,CONSUL,SERF,ZOOKEEPER,SYSTEMD}_IMAGE=...` lines on stdout
# (logs go to stderr), also written to target/test-images.env.
#
# Env knobs: FORCE=1, DEBIAN_MIRROR=<uri>, CONSTRUCTR_IMAGE_PREFIX (default
# constructr-test), CONSTRUCTR_IMAGES_ENV (default <repo>/target/test-images.env).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PREFIX=${CONSTRUCTR_IMAGE_PREFIX:-constructr-test}
FORCE=${FORCE:-0}
ENV_FILE=${CONSTRUCTR_IMAGES_ENV:-$ROOT/target/test-images.env}
export DOCKER_BUILDKIT=0

# Expected versions (used for the "already built?" check before touching apt).
ETCD_EXPECTED=3.5.16
CONSUL_EXPECTED=1.8.7
SERF_EXPECTED=0.10.1
SYSTEMD_EXPECTED=trixie
ZOOKEEPER_EXPECTED=3.8.0

log() { echo "[images] $*" >&2; }
die() { echo "[images] ERROR: $*" >&2; exit 1; }

command -v docker >/dev/null || die "docker CLI not found"
command -v apt-get >/dev/null || die "apt-get not found"
command -v dpkg-deb >/dev/null || die "dpkg-deb not found"
command -v ldd >/dev/null || die "ldd not found"
docker info >/dev/null 2>&1 || die "docker daemon not reachable"

mkdir -p "$(dirname "$ENV_FILE")"
# Serialize concurrent invocations (e.g. several test runners at once).
exec 9>"$(dirname "$ENV_FILE")/.images.lock"
flock 9

WORK=""
cleanup() { if [[ -n $WORK ]]; then rm -rf "$WORK"; fi; }
trap cleanup EXIT

# ---------------------------------------------------------------------------
# Existing images
# ---------------------------------------------------------------------------

# existing_tag REPO PREFERRED_TAG -> prints a tag of REPO that exists locally.
existing_tag() {
    local repo=$1 pref=$2
    if docker image inspect "$repo:$pref" >/dev/null 2>&1; then
        echo "$pref"
        return
    fi
    docker image ls "$repo" --format '{{.Tag}}' | grep -v '^<none>$' | head -n1 || true
}

# ---------------------------------------------------------------------------
# Temporary apt setup (trixie + bullseye + bookworm, Packages index only)
# ---------------------------------------------------------------------------

APT_OPTS=()
APT_READY=0

detect_mirror() {
    if [[ -n ${DEBIAN_MIRROR:-} ]]; then
        echo "$DEBIAN_MIRROR"
        return
    fi
    local uri="" f
    # deb822 files: first stanza with a `bookworm` suite.
    for f in /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list.d/*.sources; do
        [[ -r $f ]] || continue
        uri=$(awk '
            BEGIN { RS=""; FS="\n" }
            {
                u=""; s=0; d=0
                for (i = 1; i <= NF; i++) {
                    line = $i
                    if (line ~ /^[ \t]*#/) continue
                    if (line ~ /^Types:/ && line ~ /[ \t]deb([ \t]|$)/) d=1
                    if (line ~ /^URIs:/) { split(line, a, /[ \t]+/); u=a[2] }
                    if (line ~ /^Suites:/ && line ~ /[ \t]bookworm([ \t]|$)/) s=1
                }
                if (d && s && u != "") { print u; exit }
            }' "$f" 2>/dev/null || true)
        [[ -n $uri ]] && break
    done
    # one-line format
    if [[ -z $uri ]]; then
        for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
            [[ -r $f ]] || continue
            uri=$(sed -nE 's/^[[:space:]]*deb[[:space:]]+(\[[^]]*\][[:space:]]+)?([^[:space:]]+)[[:space:]]+bookworm[[:space:]].*/\2/p' "$f" | head -n1)
            [[ -n $uri ]] && break
        done
    fi
    case $uri in
        http://* | https://*) echo "${uri%/}" ;;
        *) echo "http://deb.debian.org/debian" ;;
    esac
}

apt_setup() {
    [[ $APT_READY == 1 ]] && return 0
    WORK=$(mktemp -d /tmp/constructr-images.XXXXXX)
    mkdir -p "$WORK/lists/partial" "$WORK/cache/archives/partial" "$WORK/deb"
    local mirror opts="target=Packages"
    mirror=$(detect_mirror)
    if [[ -r /usr/share/keyrings/debian-archive-keyring.gpg ]]; then
        opts="signed-by=/usr/share/keyrings/debian-archive-keyring.gpg $opts"
    fi
    {
        echo "deb [$opts] $mirror trixie main"
        echo "deb [$opts] $mirror bullseye main"
        echo "deb [$opts] $mirror bookworm main"
    } >"$WORK/sources.list"
    APT_OPTS=(
        -o "Dir::Etc::SourceList=$WORK/sources.list"
        -o "Dir::Etc::SourceParts=/dev/null"
        -o "Dir::State::Lists=$WORK/lists"
        -o "Dir::Cache=$WORK/cache"
        -o "Dir::Cache::pkgcache=$WORK/cache/pkgcache.bin"
        -o "Dir::Cache::srcpkgcache=$WORK/cache/srcpkgcache.bin"
        -o "APT::Sandbox::User=root"
        -o "Acquire::Retries=3"
        -o "Acquire::Languages=none"
    )
    log "apt update (temporary lists, mirror $mirror: trixie bullseye bookworm)"
    apt-get "${APT_OPTS[@]}" -q update >"$WORK/apt-update.log" 2>&1 ||
        { cat "$WORK/apt-update.log" >&2; die "apt-get update failed"; }
    APT_READY=1
}

# fetch PKG SUITE DESTROOT -> downloads PKG from SUITE, extracts it into
# DESTROOT, prints the Debian version.
fetch() {
    # NB: runs in a command substitution; apt_setup must have run already.
    local pkg=$1 suite=$2 dest=$3 deb
    [[ $APT_READY == 1 ]] || die "fetch before apt_setup"
    rm -f "$WORK/deb/${pkg}_"*.deb
    (cd "$WORK/deb" && apt-get "${APT_OPTS[@]}" -q download "$pkg/$suite" >&2) || return 1
    deb=$(ls "$WORK/deb/${pkg}_"*.deb 2>/dev/null | head -n1)
    [[ -n $deb ]] || return 1
    mkdir -p "$dest"
    dpkg-deb -x "$deb" "$dest"
    dpkg-deb -f "$deb" Version
}

# 1:3.5.16+dfsg-4+b1 -> 3.5.16
upstream_version() {
    local v=$1
    v=${v#*:}
    v=${v%-*}
    v=${v%%[+~]*}
    echo "$v"
}

# ---------------------------------------------------------------------------
# Image assembly
# ---------------------------------------------------------------------------

# copy_libs ROOTFS BIN... : copy the shared libs (per host ldd) into ROOTFS.
copy_libs() {
    local rootfs=$1 bin out lib
    shift
    for bin in "$@"; do
        if ! out=$(ldd "$bin" 2>&1); then
            if grep -q 'not a dynamic executable' <<<"$out"; then continue; fi
            echo "$out" >&2
            return 1
        fi
        if grep -qE 'not found' <<<"$out"; then
            echo "$out" >&2
            log "$(basename "$bin"): host libraries are not sufficient"
            return 1
        fi
        while read -r lib; do
            [[ -n $lib ]] || continue
            mkdir -p "$rootfs$(dirname "$lib")"
            cp -L "$lib" "$rootfs$lib"
        done < <(awk '/=> \// { print $3; next } /^[ \t]*\// { print $1 }' <<<"$out")
    done
}

# make_rootfs ROOTFS : skeleton files.
make_rootfs() {
    local rootfs=$1
    mkdir -p "$rootfs"/{etc,tmp,root,usr/local/bin}
    chmod 1777 "$rootfs/tmp"
    chmod 0700 "$rootfs/root"
    cat >"$rootfs/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
EOF
    cat >"$rootfs/etc/group" <<'EOF'
root:x:0:
nogroup:x:65534:
EOF
    echo 'hosts: files dns' >"$rootfs/etc/nsswitch.conf"
}

# build_image TAG CTXDIR : CTXDIR holds rootfs/ and Dockerfile.
build_image() {
    local tag=$1 ctx=$2
    log "docker build $tag"
    if ! docker build --force-rm -t "$tag" "$ctx" >"$ctx.build.log" 2>&1; then
        cat "$ctx.build.log" >&2
        return 1
    fi
}

# smoke TAG ARGS... : the binary must start inside the image.
smoke() {
    local tag=$1 out
    shift
    if ! out=$(docker run --rm "$tag" "$@" 2>&1); then
        echo "$out" >&2
        return 1
    fi
    log "$tag: $(head -n1 <<<"$out")"
}

build_etcd() {
    apt_setup
    local suite=$1 ctx="$WORK/etcd-$1" ver dver cver tag
    rm -rf "$ctx"
    make_rootfs "$ctx/rootfs" || return 1
    dver=$(fetch etcd-server "$suite" "$ctx/pkg") || return 1
    cver=$(fetch etcd-client "$suite" "$ctx/pkg") || return 1
    ver=$(upstream_version "$dver")
    # (set -e is off inside this function: it runs under `if !`)
    cp "$ctx/pkg/usr/bin/etcd" "$ctx/pkg/usr/bin/etcdctl" "$ctx/rootfs/usr/local/bin/" || return 1
    if [[ -x $ctx/pkg/usr/bin/etcdutl ]]; then cp "$ctx/pkg/usr/bin/etcdutl" "$ctx/rootfs/usr/local/bin/" || return 1; fi
    mkdir -p "$ctx/rootfs/var/lib/etcd"
    copy_libs "$ctx/rootfs" "$ctx"/rootfs/usr/local/bin/* || return 1
    cat >"$ctx/Dockerfile" <<EOF
FROM scratch
COPY rootfs/ /
ENV PATH=/usr/local/bin HOME=/root ETCDCTL_API=3
WORKDIR /var/lib/etcd
LABEL org.constructr.source="debian $suite etcd-server $dver, etcd-client $cver"
EXPOSE 2379 2380
ENTRYPOINT ["/usr/local/bin/etcd"]
EOF
    tag="$PREFIX/etcd:$ver"
    build_image "$tag" "$ctx" || return 1
    if ! smoke "$tag" --version || ! docker run --rm --entrypoint /usr/local/bin/etcdctl "$tag" version >/dev/null; then
        docker image rm -f "$tag" >/dev/null 2>&1 || true
        return 1
    fi
    ETCD_TAG=$ver
}

# build_single NAME SUITE DOCKERFILE_LINES [DIR...] : an image of Debian's
# package NAME from SUITE with /usr/local/bin/NAME as its ENTRYPOINT, the
# lines DOCKERFILE_LINES (WORKDIR, EXPOSE, CMD) after it, and the empty
# directories DIR... in its rootfs; tagged $PREFIX/NAME:<upstream version>,
# which it leaves in BUILT_VERSION.
build_single() {
    local name=$1 suite=$2 lines=$3 ctx dver tag dir
    shift 3
    apt_setup
    ctx="$WORK/$name"
    rm -rf "$ctx"
    make_rootfs "$ctx/rootfs"
    dver=$(fetch "$name" "$suite" "$ctx/pkg") || die "cannot download $name from $suite"
    BUILT_VERSION=$(upstream_version "$dver")
    cp "$ctx/pkg/usr/bin/$name" "$ctx/rootfs/usr/local/bin/"
    for dir in "$@"; do mkdir -p "$ctx/rootfs$dir"; done
    copy_libs "$ctx/rootfs" "$ctx/rootfs/usr/local/bin/$name" || die "$name: cannot collect libs"
    cat >"$ctx/Dockerfile" <<EOF
FROM scratch
COPY rootfs/ /
ENV PATH=/usr/local/bin HOME=/root
LABEL org.constructr.source="debian $suite $name $dver"
ENTRYPOINT ["/usr/local/bin/$name"]
$lines
EOF
    tag="$PREFIX/$name:$BUILT_VERSION"
    build_image "$tag" "$ctx" || die "cannot build $tag"
    smoke "$tag" version || { docker image rm -f "$tag" >/dev/null 2>&1 || true; die "$name image smoke test failed"; }
}

build_consul() {
    build_single consul bullseye 'WORKDIR /consul
EXPOSE 8300 8301 8301/udp 8302 8302/udp 8500 8600 8600/udp
CMD ["agent", "-dev", "-client", "0.0.0.0"]' /consul/data /consul/config
    CONSUL_TAG=$BUILT_VERSION
}

build_serf() {
    build_single serf trixie 'EXPOSE 7373 7946 7946/udp
CMD ["agent", "-bind", "0.0.0.0:7946", "-rpc-addr", "0.0.0.0:7373"]'
    SERF_TAG=$BUILT_VERSION
}

# A Debian trixie host for the Ansible role's test: debootstrap (no registry), then
# `docker import`. Systemd is PID 1 (CMD /sbin/init); sshd lets ansible-playbook in;
# Debian's serf package is installed as Debian installs it (its own serf.service
# enabled), so the role meets what it meets on a real host.
build_systemd() {
    command -v debootstrap >/dev/null || die "debootstrap not found (scripts/install-deps.sh installs it)"
    local root mirror tag="$PREFIX/systemd:$SYSTEMD_EXPECTED" keyring=()
    WORK=${WORK:-$(mktemp -d /tmp/constructr-images.XXXXXX)}
    root="$WORK/systemd-rootfs"
    mirror=$(detect_mirror)
    if [[ -r /usr/share/keyrings/debian-archive-keyring.gpg ]]; then
        keyring=(--keyring=/usr/share/keyrings/debian-archive-keyring.gpg)
    fi
    log "debootstrap trixie from $mirror (about a minute)"
    if ! debootstrap "${keyring[@]}" --variant=minbase \
        --include=systemd,systemd-sysv,dbus,python3,openssh-server,iproute2,curl,procps,serf \
        trixie "$root" "$mirror" >"$WORK/debootstrap.log" 2>&1; then
        tail -n 30 "$WORK/debootstrap.log" >&2
        die "debootstrap trixie failed"
    fi
    # Every container gets its own machine id at boot.
    : >"$root/etc/machine-id"
    rm -f "$root/var/lib/dbus/machine-id"
    rm -rf "$root/var/cache/apt/archives/"*.deb "$root/var/lib/apt/lists/"*
    log "docker import $tag"
    tar -C "$root" -c . | docker import \
        --change 'CMD ["/sbin/init"]' --change 'ENV container=docker' - "$tag" >/dev/null ||
        die "docker import $tag failed"
    rm -rf "$root"
    SYSTEMD_TAG=$SYSTEMD_EXPECTED
}

# ZooKeeper from Debian bookworm with the JRE it needs: debootstrap, a start script,
# `docker import`.
build_zookeeper() {
    command -v debootstrap >/dev/null || die "debootstrap not found (scripts/install-deps.sh installs it)"
    local root mirror tag keyring=() ver
    WORK=${WORK:-$(mktemp -d /tmp/constructr-images.XXXXXX)}
    root="$WORK/zookeeper-rootfs"
    mirror=$(detect_mirror)
    if [[ -r /usr/share/keyrings/debian-archive-keyring.gpg ]]; then
        keyring=(--keyring=/usr/share/keyrings/debian-archive-keyring.gpg)
    fi
    log "debootstrap bookworm + zookeeper + JRE from $mirror (about two minutes)"
    if ! debootstrap "${keyring[@]}" --variant=minbase --include=zookeeper,default-jre-headless \
        bookworm "$root" "$mirror" >"$WORK/debootstrap-zk.log" 2>&1; then
        tail -n 30 "$WORK/debootstrap-zk.log" >&2
        die "debootstrap of the ZooKeeper image failed"
    fi
    ver=$(upstream_version "$(chroot "$root" dpkg-query -W -f '${Version}' zookeeper 2>/dev/null || echo "$ZOOKEEPER_EXPECTED")")
    tag="$PREFIX/zookeeper:$ver"
    rm -rf "$root/var/cache/apt/archives/"*.deb "$root/var/lib/apt/lists/"* "$root/usr/share/doc" "$root/usr/share/man"
    cat >"$root/usr/local/bin/zk-start" <<'ZK'
#!/bin/sh
# One ZooKeeper server in the foreground. ZK_ID + ZK_SERVERS ("server.1=zk1:2888:3888;2181
# ...") make it a member of an ensemble; without them it runs stand-alone. Sessions per
# client address are not limited (ZK_MAX_CLIENT_CNXNS; ZooKeeper's default of 60 refuses
# the rest of the hundreds of sessions the benchmark opens from one address).
set -e
mkdir -p /data /conf
cat > /conf/zoo.cfg <<CFG
tickTime=${ZK_TICK_MS:-500}
initLimit=20
syncLimit=10
dataDir=/data
clientPort=2181
admin.enableServer=false
4lw.commands.whitelist=ruok,srvr,stat,mntr
minSessionTimeout=1000
maxSessionTimeout=60000
maxClientCnxns=${ZK_MAX_CLIENT_CNXNS:-0}
CFG
if [ -n "$ZK_SERVERS" ]; then
    for s in $ZK_SERVERS; do echo "$s" >> /conf/zoo.cfg; done
    echo "${ZK_ID:?ZK_ID is needed with ZK_SERVERS}" > /data/myid
fi
exec java -Xmx256m -XX:+UseSerialGC $ZK_JAVA_OPTS \
    -cp /usr/share/java/zookeeper.jar org.apache.zookeeper.server.quorum.QuorumPeerMain /conf/zoo.cfg
ZK
    chmod 0755 "$root/usr/local/bin/zk-start"
    log "docker import $tag"
    tar -C "$root" -c . | docker import --change 'CMD ["/usr/local/bin/zk-start"]' \
        --change 'EXPOSE 2181 2888 3888' - "$tag" >/dev/null || die "docker import $tag failed"
    rm -rf "$root"
    ZOOKEEPER_TAG=$ver
}

# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------

ETCD_TAG="" CONSUL_TAG="" SERF_TAG="" SYSTEMD_TAG="" ZOOKEEPER_TAG=""
if [[ $FORCE != 1 ]]; then
    ETCD_TAG=$(existing_tag "$PREFIX/etcd" "$ETCD_EXPECTED")
    CONSUL_TAG=$(existing_tag "$PREFIX/consul" "$CONSUL_EXPECTED")
    SERF_TAG=$(existing_tag "$PREFIX/serf" "$SERF_EXPECTED")
    SYSTEMD_TAG=$(existing_tag "$PREFIX/systemd" "$SYSTEMD_EXPECTED")
    ZOOKEEPER_TAG=$(existing_tag "$PREFIX/zookeeper" "$ZOOKEEPER_EXPECTED")
fi

if [[ -n $ETCD_TAG ]]; then
    log "$PREFIX/etcd:$ETCD_TAG exists, skipping (FORCE=1 to rebuild)"
elif ! build_etcd trixie; then
    log "etcd from trixie failed, falling back to bookworm"
    build_etcd bookworm || die "cannot build etcd image"
fi

if [[ -n $CONSUL_TAG ]]; then
    log "$PREFIX/consul:$CONSUL_TAG exists, skipping (FORCE=1 to rebuild)"
else
    build_consul
fi

if [[ -n $SERF_TAG ]]; then
    log "$PREFIX/serf:$SERF_TAG exists, skipping (FORCE=1 to rebuild)"
else
    build_serf
fi

if [[ -n $ZOOKEEPER_TAG ]]; then
    log "$PREFIX/zookeeper:$ZOOKEEPER_TAG exists, skipping (FORCE=1 to rebuild)"
else
    build_zookeeper
fi

if [[ -n $SYSTEMD_TAG ]]; then
    log "$PREFIX/systemd:$SYSTEMD_TAG exists, skipping (FORCE=1 to rebuild)"
else
    build_systemd
fi

# Dangling images left behind by FORCE rebuilds.
docker image prune -f --filter "label=org.constructr.source" >/dev/null 2>&1 || true

out="export CONSTRUCTR_ETCD_IMAGE=$PREFIX/etcd:$ETCD_TAG
export CONSTRUCTR_CONSUL_IMAGE=$PREFIX/consul:$CONSUL_TAG
export CONSTRUCTR_SERF_IMAGE=$PREFIX/serf:$SERF_TAG
export CONSTRUCTR_ZOOKEEPER_IMAGE=$PREFIX/zookeeper:$ZOOKEEPER_TAG
export CONSTRUCTR_SYSTEMD_IMAGE=$PREFIX/systemd:$SYSTEMD_TAG"
printf '%s\n' "$out" >"$ENV_FILE.tmp"
mv "$ENV_FILE.tmp" "$ENV_FILE"
log "wrote $ENV_FILE"
printf '%s\n' "$out"
