#!/bin/sh
# Install containerd-shim-wasmtime-v1 (runtime io.containerd.wasmtime.v1) on a node and add a
# CRI runtime handler for it to containerd's config. Idempotent: run it again to upgrade or to
# repair; nothing is duplicated. Runs as root with the node's python3 (3.11 or newer).
#
# Usage: install.sh [options]          (install.sh --help for the options)
set -eu

PROG=install.sh
SHIM="containerd-shim-wasmtime-v1"
RUNTIME_TYPE=io.containerd.wasmtime.v1
SCRIPT_DIR=$(CDPATH='' cd -- "$(dirname -- "$0")" && pwd)
HELPER=$SCRIPT_DIR/lib/containerd_config.py

prefix=/opt/containerd-shim-wasm
bin_dir=/usr/local/bin
config=/etc/containerd/config.toml
handler=wasmtime
systemd_cgroup=auto
from=
python=python3
py=
containerd=
containerd_set=0
service=containerd
systemd_dir=${INSTALL_SYSTEMD_DIR:-/run/systemd/system}
offline=0
dry_run=0
restart=0
uninstall=0
# The shim's node cache of compiled modules (the shim reads the same variable).
compile_cache=${SHIM_COMPILE_CACHE:-/var/lib/containerd-shim-wasm/compiled}/wasmtime
skip_venv=0
skip_config=0
force=0
tmp=

usage() {
	cat <<EOF
Usage: $PROG [options]

Installs the wasmtime containerd shim into a virtualenv (<prefix>/venv, made with the node's
python3), links $SHIM into <bin-dir> (on containerd's PATH), and adds
the CRI runtime handler <handler> (runtime_type $RUNTIME_TYPE) to containerd's config.
Run it again to upgrade; nothing is duplicated.

Options:
  --from DIR              the packages: a directory of wheels/sdists (containerd_shimkit,
                          containerd_shim_wasm, containerd_shim_wasmtime and, for --offline,
                          their dependencies), or a source tree's packages/ directory
                          (default: $SCRIPT_DIR/../wheels, else $SCRIPT_DIR/../packages)
  --offline               install from --from only (pip --no-index)
  --prefix DIR            where the virtualenv goes (default: $prefix)
  --bin-dir DIR           where the $SHIM link goes (default: $bin_dir)
  --python PATH           the interpreter for the virtualenv (default: python3; needs 3.11+)
  --force                 replace a $SHIM in <bin-dir> that is not our link
  --config PATH           containerd's config file (default: $config)
  --handler NAME          the CRI runtime handler, i.e. the RuntimeClass's handler
                          (default: $handler)
  --systemd-cgroup true|false|auto
                          the handler's SystemdCgroup; must match the kubelet's cgroup driver.
                          auto (default): as the default runtime (runc) in the config has it;
                          if that is not runc, true when /run/systemd/system exists
  --containerd PATH       containerd binary that checks the edited config with
                          'config dump' and tells the schema for a new file (default: the
                          one on PATH; '' for none)
  --skip-venv             only edit the config (no virtualenv, no link)
  --skip-config           only install the shim (no config change)
  --restart               restart containerd (systemctl restart <service>) if the config
                          changed, now or in an earlier run that did not restart it
  --service NAME          the systemd unit to restart (default: $service)
  --uninstall             remove the handler (if install.sh added it), the link and the
                          virtualenv
  --dry-run               print what would change; change nothing
  -h, --help              this text

Environment: INSTALL_SYSTEMD_DIR replaces /run/systemd/system in the checks above.
EOF
}

say() { printf '%s: %s\n' "$PROG" "$*" >&2; }
# Report something done (silent with --dry-run, where run() already showed the command).
did() { if [ "$dry_run" = 0 ]; then say "$@"; fi; }
die() {
	printf '%s: error: %s\n' "$PROG" "$*" >&2
	exit 1
}
# Run a command, or only show it with --dry-run.
run() {
	if [ "$dry_run" = 1 ]; then
		printf '%s: would run:' "$PROG" >&2
		printf ' %s' "$@" >&2
		printf '\n' >&2
	else
		"$@"
	fi
}
cleanup() {
	if [ -n "$tmp" ]; then rm -rf -- "$tmp"; fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

need_value() {
	[ $# -ge 2 ] || die "$1 needs a value"
}

while [ $# -gt 0 ]; do
	case $1 in
	--from | --prefix | --bin-dir | --python | --config | --handler | --systemd-cgroup | --containerd | --service)
		need_value "$@"
		opt=$1
		val=$2
		shift 2
		;;
	--*=*)
		opt=${1%%=*}
		val=${1#*=}
		shift
		;;
	--offline) offline=1; shift; continue ;;
	--force) force=1; shift; continue ;;
	--skip-venv) skip_venv=1; shift; continue ;;
	--skip-config) skip_config=1; shift; continue ;;
	--restart) restart=1; shift; continue ;;
	--uninstall) uninstall=1; shift; continue ;;
	--dry-run) dry_run=1; shift; continue ;;
	-h | --help) usage; exit 0 ;;
	*) die "unknown argument: $1 (see --help)" ;;
	esac
	case $opt in
	--from) from=$val ;;
	--prefix) prefix=$val ;;
	--bin-dir) bin_dir=$val ;;
	--python) python=$val ;;
	--config) config=$val ;;
	--handler) handler=$val ;;
	--systemd-cgroup) systemd_cgroup=$val ;;
	--containerd) containerd=$val; containerd_set=1 ;;
	--service) service=$val ;;
	*) die "unknown option: $opt (see --help)" ;;
	esac
done

case $systemd_cgroup in
true | false | auto) ;;
*) die "--systemd-cgroup must be true, false or auto, not '$systemd_cgroup'" ;;
esac
case $handler in
'' | *[!a-z0-9-]* | -* | *-) bad_handler=1 ;;
*) bad_handler=0 ;;
esac
if [ "$bad_handler" = 1 ] || [ ${#handler} -gt 63 ]; then
	die "--handler '$handler' is not a DNS label (lowercase letters, digits and '-', at most 63), which a RuntimeClass handler must be"
fi
case $prefix in
/*) ;;
*) die "--prefix must be an absolute path (the shim's scripts name it in their #! line)" ;;
esac
prefix=${prefix%/}
venv=$prefix/venv
link=$bin_dir/$SHIM
pending=$prefix/restart-pending
if [ "$containerd_set" = 0 ]; then
	containerd=$(command -v containerd 2>/dev/null || true)
fi

# ------------------------------------------------------------------------- python

find_python() {
	py=$(command -v "$python" 2>/dev/null) ||
		die "no '$python' found: the shim needs Python 3.11 or newer on the node (--python PATH)"
	if ! "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
		ver=$("$py" -c 'import platform; print(platform.python_version())' 2>/dev/null || echo unknown)
		die "$py is Python $ver; the shim needs Python 3.11 or newer (--python PATH)"
	fi
}

# "<base prefix> <major.minor>" of an interpreter: a venv is reusable when these still match.
py_identity() {
	"$1" -c 'import sys; print(sys.base_prefix, "%d.%d" % sys.version_info[:2])' 2>/dev/null
}

# ------------------------------------------------------------------------- packages

# The three distributions in $from: sets src_kind (projects|dists) and src_files.
find_sources() {
	if [ -z "$from" ]; then
		if [ -d "$SCRIPT_DIR/../wheels" ]; then
			from=$SCRIPT_DIR/../wheels
		elif [ -d "$SCRIPT_DIR/../packages" ]; then
			from=$SCRIPT_DIR/../packages
		else
			die "no packages next to $PROG (../wheels or ../packages); pass --from DIR"
		fi
	fi
	[ -d "$from" ] || die "--from $from is not a directory"
	from=$(CDPATH='' cd -- "$from" && pwd)
	if [ -f "$from/containerd-shimkit/pyproject.toml" ] &&
		[ -f "$from/containerd-shim-wasm/pyproject.toml" ] &&
		[ -f "$from/containerd-shim-wasmtime/pyproject.toml" ]; then
		src_kind=projects
		return
	fi
	src_kind=dists
	src_files=
	for dist in containerd_shimkit containerd_shim_wasm containerd_shim_wasmtime; do
		src_files="$src_files $(find_dist "$dist")"
	done
}

# The one wheel (else sdist) of a distribution in $from.
find_dist() {
	hyphen=$(printf '%s' "$1" | tr _ -)
	for pattern in "$1-*.whl" "$1-*.tar.gz" "$hyphen-*.tar.gz"; do
		found=
		for f in "$from"/$pattern; do
			[ -e "$f" ] || continue
			[ -z "$found" ] || die "more than one $pattern in $from; keep one version"
			found=$f
		done
		if [ -n "$found" ]; then
			case $found in
			*' '*) die "path with a space: $found" ;;
			esac
			printf '%s' "$found"
			return
		fi
	done
	die "no $1 wheel or sdist (and no packages/ source tree) in $from"
}

pip() {
	run "$venv/bin/python" -m pip --disable-pip-version-check --no-input "$@"
}

make_venv() {
	if [ -x "$venv/bin/python" ] && [ "$(py_identity "$venv/bin/python")" = "$(py_identity "$py")" ] &&
		"$venv/bin/python" -m pip --version >/dev/null 2>&1; then
		say "reusing the virtualenv $venv ($("$venv/bin/python" --version 2>&1))"
		return
	fi
	if [ -e "$venv" ]; then
		say "recreating $venv (missing, broken, or made by another Python)"
	fi
	if "$py" -c 'import ensurepip, venv' 2>/dev/null; then
		run "$py" -m venv --clear "$venv"
		return
	fi
	# Debian/Ubuntu without python3-venv: no ensurepip. Bootstrap pip from a pip wheel
	# shipped with the packages (a wheel is importable, so pip runs from it).
	pipwhl=
	for f in "$from"/pip-*.whl; do
		if [ -e "$f" ]; then pipwhl=$f; fi
	done
	[ -n "$pipwhl" ] ||
		die "$py cannot make a virtualenv with pip (no ensurepip; on Debian/Ubuntu: apt-get install python3-venv), and $from has no pip wheel to bootstrap from"
	"$py" -c 'import venv' 2>/dev/null || die "$py has no venv module (on Debian/Ubuntu: apt-get install python3-venv)"
	run "$py" -m venv --clear --without-pip "$venv"
	run "$venv/bin/python" "$pipwhl/pip" install --disable-pip-version-check --no-index --quiet "$pipwhl"
}

install_packages() {
	index=
	if [ "$offline" = 1 ]; then index=--no-index; fi
	if [ "$src_kind" = projects ]; then
		# Build from a copy: setuptools leaves build/ in the tree, and a stale build/lib
		# would carry deleted modules into the wheel.
		say "building wheels from $from"
		wheels=$tmp/wheels
		for p in containerd-shimkit containerd-shim-wasm containerd-shim-wasmtime; do
			run cp -R "$from/$p" "$tmp/$p"
			run rm -rf "$tmp/$p/build" "$tmp/$p/dist"
			for egg in "$tmp/$p"/src/*.egg-info; do
				if [ -e "$egg" ]; then run rm -rf "$egg"; fi
			done
		done
		# shellcheck disable=SC2086 # $index is empty or one word
		pip wheel --quiet --no-deps $index --wheel-dir "$wheels" \
			"$tmp/containerd-shimkit" "$tmp/containerd-shim-wasm" "$tmp/containerd-shim-wasmtime"
		if [ "$dry_run" = 1 ]; then
			src_files=" $wheels/containerd_shimkit-*.whl $wheels/containerd_shim_wasm-*.whl $wheels/containerd_shim_wasmtime-*.whl"
		else
			src_files=
			for dist in containerd_shimkit containerd_shim_wasm containerd_shim_wasmtime; do
				src_files="$src_files $(from=$wheels find_dist "$dist")"
			done
		fi
		links=$wheels
	else
		links=$from
	fi
	say "installing${src_files} into $venv"
	# Dependencies (wasmtime, protobuf) as needed, then our three again, unconditionally:
	# a rebuilt package of the same version must still replace the installed one.
	# shellcheck disable=SC2086 # $index is empty or one word; $src_files has no spaces
	pip install --quiet $index --find-links "$links" $src_files
	# shellcheck disable=SC2086
	pip install --quiet --no-deps --force-reinstall $index $src_files
	if [ "$dry_run" = 0 ]; then
		"$venv/bin/$SHIM" -v >/dev/null || die "the installed $venv/bin/$SHIM does not run"
		say "installed: $("$venv/bin/$SHIM" -v | sed -n 's/^ *Version: //p' | head -n 1)"
	fi
}

link_shim() {
	target=$venv/bin/$SHIM
	if [ -L "$link" ] && [ "$(readlink "$link")" = "$target" ]; then
		say "$link already points to $target"
	else
		if [ -e "$link" ] || [ -L "$link" ]; then
			if [ -L "$link" ]; then what="a link to $(readlink "$link")"; else what="not a link"; fi
			[ "$force" = 1 ] || die "$link exists ($what); pass --force to replace it"
		fi
		run mkdir -p "$bin_dir"
		run ln -sfn "$target" "$link"
		did "linked $link -> $target"
	fi
	# Another shim of the same name earlier on PATH would win.
	first=$(command -v "$SHIM" 2>/dev/null || true)
	if [ "$dry_run" = 0 ] && [ -n "$first" ] && [ "$first" != "$link" ]; then
		say "warning: $first comes before $link on PATH; containerd may run that one instead"
	fi
}

unlink_shim() {
	if [ -L "$link" ]; then
		case $(readlink "$link") in
		"$venv"/*)
			run rm -f "$link"
			did "removed $link"
			;;
		*) say "$link points elsewhere ($(readlink "$link")); left alone" ;;
		esac
	elif [ -e "$link" ]; then
		say "$link is not our link; left alone"
	fi
}

remove_venv() {
	if [ -e "$venv" ]; then
		run rm -rf "$venv"
		did "removed $venv"
	fi
	# The shim's compiled modules (containerd_shim_wasm.node_cache): useless without it.
	if [ -e "$compile_cache" ]; then
		run rm -rf "$compile_cache"
		did "removed $compile_cache"
	fi
}

# ------------------------------------------------------------------------- config

# Add or remove the handler; returns 0 and sets config_changed.
edit_config() {
	status=$tmp/config-status
	set -- "$1" "--config=$config" "--handler=$handler" "--containerd=$containerd" "--status-file=$status"
	if [ "$1" = add ]; then
		set -- "$@" "--runtime-type=$RUNTIME_TYPE" "--systemd-cgroup=$systemd_cgroup" "--systemd-dir=$systemd_dir"
	fi
	if [ "$dry_run" = 1 ]; then set -- "$@" --dry-run; fi
	"$py" "$HELPER" "$@" || die "the containerd config was not changed"
	config_changed=0
	if [ "$(cat "$status")" = changed ]; then config_changed=1; fi
}

restart_containerd() {
	if [ "$dry_run" = 1 ]; then
		say "would restart $service"
		return
	fi
	if [ -d "$systemd_dir" ] && command -v systemctl >/dev/null 2>&1; then
		say "restarting $service"
		systemctl restart "$service" || die "systemctl restart $service failed"
		systemctl is-active --quiet "$service" || die "$service is not active after the restart"
		rm -f "$pending"
	else
		die "cannot restart $service here (no systemd); restart containerd yourself to load the handler"
	fi
}

# ------------------------------------------------------------------------- main

[ "$(id -u)" = 0 ] || [ "$dry_run" = 1 ] || say "warning: not running as root"
if [ "$skip_config" = 0 ] || { [ "$uninstall" = 0 ] && [ "$skip_venv" = 0 ]; }; then
	find_python
fi
tmp=$(mktemp -d "${TMPDIR:-/tmp}/containerd-shim-wasm-install.XXXXXX")
config_changed=0

if [ "$uninstall" = 1 ]; then
	if [ "$skip_config" = 0 ]; then edit_config remove; fi
	if [ "$skip_venv" = 0 ]; then
		unlink_shim
		remove_venv
	fi
	if [ "$dry_run" = 0 ] && [ -d "$prefix" ]; then
		rm -f "$pending"
		rmdir "$prefix" 2>/dev/null || true
	fi
	if [ "$config_changed" = 1 ]; then
		if [ "$restart" = 1 ]; then
			restart_containerd
		else
			say "restart containerd to unload the handler (e.g. systemctl restart $service)"
		fi
	fi
	exit 0
fi

if [ "$skip_venv" = 0 ]; then
	find_sources
	run mkdir -p "$prefix"
	make_venv
	install_packages
	link_shim
fi
if [ "$skip_config" = 0 ]; then
	edit_config add
	if [ "$config_changed" = 1 ] && [ "$dry_run" = 0 ]; then
		mkdir -p "$prefix"
		: >"$pending"
	fi
fi
if [ "$config_changed" = 0 ] && [ -e "$pending" ] && [ -n "$py" ] && "$py" "$HELPER" restarted-since "$pending"; then
	# containerd was restarted (by someone else) after the handler was added.
	run rm -f "$pending"
fi
if [ -e "$pending" ] || { [ "$dry_run" = 1 ] && [ "$config_changed" = 1 ]; }; then
	if [ "$restart" = 1 ]; then
		restart_containerd
	elif [ "$config_changed" = 1 ]; then
		say "restart containerd to load the handler: systemctl restart $service (or rerun with --restart)"
	else
		say "containerd has not been restarted since the handler was added: systemctl restart $service (or rerun with --restart)"
	fi
fi
did "done"
