#!/bin/sh
# Entrypoint of the installer image (deploy/Dockerfile) run by deploy/daemonset.yaml.
#
# The shim's virtualenv must be made by the node's own python3 at node paths, so the installer
# does not run in this container: it copies deploy/ and the wheels into a hostPath directory,
# runs install.sh there inside the node's namespaces (nsenter into PID 1; the pod has hostPID
# and is privileged), removes the copy, labels the node and then sleeps, so that the pod stays
# Running and a rollout of a new image re-runs the installer on every node.
#
# Environment (defaults in brackets):
#   ACTION        install | uninstall                                             [install]
#   INSTALL_ARGS  more install.sh options, e.g. "--restart --systemd-cgroup true" [--restart]
#   NODE_NAME     this node (downward API); needed for NODE_LABEL
#   NODE_LABEL    KEY=VALUE set when installed, removed on uninstall; empty: none
#                                                    [containerd-shim-wasm/wasmtime=true]
#   HOST_DIR      the installer's prefix as the node sees it     [/opt/containerd-shim-wasm]
#   HOST_MOUNT    the same directory as mounted in this container
#                                                      [/host/opt/containerd-shim-wasm]
#   HOST_EXEC     how to run a command on the node
#                             [nsenter --target 1 --mount --uts --ipc --net --pid --]
#   PAYLOAD       where the image keeps deploy/ and wheels/                        [/payload]
#   PAUSE         1: sleep when done (a DaemonSet pod must keep running); 0: exit    [1]
set -eu

PROG=daemonset-entrypoint.sh
ACTION=${ACTION:-install}
INSTALL_ARGS=${INSTALL_ARGS---restart}
NODE_NAME=${NODE_NAME:-}
NODE_LABEL=${NODE_LABEL-containerd-shim-wasm/wasmtime=true}
HOST_DIR=${HOST_DIR:-/opt/containerd-shim-wasm}
HOST_MOUNT=${HOST_MOUNT:-/host/opt/containerd-shim-wasm}
HOST_EXEC=${HOST_EXEC-nsenter --target 1 --mount --uts --ipc --net --pid --}
PAYLOAD=${PAYLOAD:-/payload}
PAUSE=${PAUSE:-1}

say() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() {
	printf '%s: error: %s\n' "$PROG" "$*" >&2
	exit 1
}

label() {
	if [ -z "$NODE_LABEL" ]; then return 0; fi
	[ -n "$NODE_NAME" ] || die "NODE_NAME is not set (downward API spec.nodeName); cannot label the node"
	python3 "$PAYLOAD/deploy/lib/label_node.py" "$NODE_NAME" "$1" ||
		die "could not label node $NODE_NAME (see daemonset.yaml for the RBAC it needs)"
}

# Run install.sh from a copy on the node.
run_installer() {
	stage=$HOST_MOUNT/installer
	rm -rf "$stage"
	mkdir -p "$stage"
	cp -R "$PAYLOAD/deploy" "$stage/deploy"
	if [ -d "$PAYLOAD/wheels" ]; then cp -R "$PAYLOAD/wheels" "$stage/wheels"; fi
	status=0
	# shellcheck disable=SC2086 # HOST_EXEC and INSTALL_ARGS are word lists
	$HOST_EXEC /bin/sh "$HOST_DIR/installer/deploy/install.sh" --prefix "$HOST_DIR" \
		--from "$HOST_DIR/installer/wheels" --offline "$@" $INSTALL_ARGS || status=$?
	rm -rf "$stage"
	return "$status"
}

case $ACTION in
install)
	say "installing on node ${NODE_NAME:-?}"
	run_installer || die "install.sh failed (exit $?)"
	label "$NODE_LABEL"
	;;
uninstall)
	say "uninstalling from node ${NODE_NAME:-?}"
	# First the label, so that no new wasm pod is scheduled here.
	label "${NODE_LABEL%%=*}-"
	run_installer --uninstall || die "install.sh --uninstall failed (exit $?)"
	;;
*) die "ACTION must be install or uninstall, not '$ACTION'" ;;
esac
say "done"

if [ "$PAUSE" = 1 ]; then
	trap 'exit 0' TERM INT
	while :; do
		sleep 3600 &
		wait $! || true
	done
fi
