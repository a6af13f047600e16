#!/usr/bin/env bash
# play-check.sh - run the rendered Kubernetes API Deployment + Service + model PVC with `podman kube play`,
# in a private network namespace, and send a real prediction through it; then `podman kube down`.
#
# Usage (root, after ../shared/tools/container-check.sh built the image and wrote its podman config):
#   bash deploy/kubernetes/play-check.sh
# Knobs: WORK=/tmp/container-check (the container check's podman storage and config),
#        IMAGE=localhost/pixelserve:latest (what the container check builds: the compose file's image),
#        WAIT_S=120, DATASETS=../shared/datasets (IDX folders for the training job of the second play).
#
# Two plays share one volume: first without the optional admin Secret (the API must start, admin routes
# 403), then with it and the worker Deployment (the admin token works; the init container finds the models
# already seeded; a training job goes API -> job store -> worker -> shared volume -> hot reload).
# podman 4.3 kube play ignores the Service, HPA, PDB, NetworkPolicy, readiness and startup probes, the
# preStop hook and the grace period, and makes an emptyDir a named volume shared by pods; this script
# plays one replica and prints what podman did apply (README, "Kubernetes").
set -Eeuo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
WORK=${WORK:-/tmp/container-check}
IMAGE=${IMAGE:-localhost/pixelserve:latest}
WAIT_S=${WAIT_S:-120}
DATASETS=${DATASETS:-$ROOT/../shared/datasets}
NETNS=k8s-play-$$
OUT=$WORK/kube-play
API=pixelserve-api
# A Python with PyYAML for the rendered YAML: the project's venv (`make test` made it), else the system's.
PYYAML=$ROOT/.venv/bin/python; [[ -x $PYYAML ]] || PYYAML=python3

[[ -f $WORK/etc/containers.conf ]] || { echo "no $WORK/etc/containers.conf: run ../shared/tools/container-check.sh first"; exit 1; }
export CONTAINERS_STORAGE_CONF=$WORK/etc/storage.conf CONTAINERS_CONF=$WORK/etc/containers.conf
podman image exists "$IMAGE" || { echo "no image $IMAGE: run ../shared/tools/container-check.sh first"; exit 1; }
mkdir -p "$OUT"
VOLUMES_BEFORE=$(podman volume ls -q | sort)

ns() { nsenter --net="/run/netns/$NETNS" "$@"; }  # as the container check: `ip netns exec` hides cgroups from runc
# podman logs an error for every healthcheck timer it cannot (un)schedule without systemd: noise here.
quiet() { "$@" 2> >(grep -v 'systemd connection' >&2); }
step() { printf '\n=== %s\n' "$*"; }
fail() { echo "FAIL: $*"; podman ps -a --format '{{.Names}} {{.Status}}'; for c in $(podman ps -a --format '{{.Names}}'); do
  echo "--- $c"; podman logs --tail 15 "$c" 2>&1 | sed 's/^/    /'; done; exit 1; }
cleanup() {
  set +e
  for f in "$OUT/play.yaml" "$OUT/play-again.yaml"; do [[ -f $f ]] && ns podman kube down "$f" >/dev/null 2>&1; done
  podman pod ps -q --filter "name=pixelserve-" | xargs -r podman pod rm -f -t 2 >/dev/null 2>&1
  podman volume rm -f pixelserve-models pixelserve-datasets >/dev/null 2>&1
  # The init container does not mount the image's VOLUME path: podman gave it an anonymous volume.
  comm -13 <(echo "$VOLUMES_BEFORE") <(podman volume ls -q | sort) | xargs -r podman volume rm -f >/dev/null 2>&1
  podman secret rm pixelserve-job-store pixelserve-admin >/dev/null 2>&1
  [[ -e /run/netns/$NETNS ]] && ip netns del "$NETNS"
}
trap cleanup EXIT

# podman 4.3 reads a secretKeyRef's podman secret as JSON {key: base64(value)}; a `kind: Secret` in the
# played YAML is stored whole and then refused ("secret ... is not valid JSON"), so secrets are created here.
podman_secret() { # NAME KEY VALUE
  podman secret rm "$1" >/dev/null 2>&1 || true
  python3 -c 'import base64, json, sys; print(json.dumps({sys.argv[1]: base64.b64encode(sys.argv[2].encode()).decode()}))' \
    "$2" "$3" | podman secret create "$1" - >/dev/null
}

step "render (kubectl kustomize deploy/kubernetes/base) and select Deployment, Service, PVC of the API"
kubectl kustomize "$ROOT/deploy/kubernetes/base" > "$OUT/base.yaml"
"$PYYAML" - "$OUT/base.yaml" "$OUT/play.yaml" "$OUT/play-again.yaml" <<'PY'
import sys, yaml
rendered = list(yaml.safe_load_all(open(sys.argv[1])))
wanted = {("Deployment", "pixelserve-api"), ("Service", "pixelserve-api"), ("PersistentVolumeClaim", "pixelserve-models")}
docs = [d for d in rendered if (d["kind"], d["metadata"]["name"]) in wanted]
assert len(docs) == 3, [(d["kind"], d["metadata"]["name"]) for d in docs]
worker = [d for d in rendered if (d["kind"], d["metadata"]["name"]) == ("Deployment", "pixelserve-worker")]
# Two changes to the rendered objects. podman 4.3 plays every replica as a pod of its own, and publishes
# each containerPort on the host's port of the same number, so a second replica fails ("address already
# in use"): one replica. And podman 4.3 gives init containers the pod's restart policy, so
# with a Deployment's `Always` the finished init container is restarted and kube play fails to remove it
# ("cannot remove container ... as it is running"; podman issue #16343). OnFailure still restarts a
# failed container. Kubernetes itself requires Always in a Deployment (validated by the tests).
for d in docs + worker:
    if d["kind"] == "Deployment":
        d["spec"]["replicas"] = 1
        d["spec"]["template"]["spec"]["restartPolicy"] = "OnFailure"
yaml.safe_dump_all(docs, open(sys.argv[2], "w"), sort_keys=False)
# The second play reuses the volume: podman 4.3 refuses a PVC whose volume exists ("volume already exists").
# It adds the training worker (its datasets volume is made and filled by this script).
again = [d for d in docs if d["kind"] != "PersistentVolumeClaim"] + worker
yaml.safe_dump_all(again, open(sys.argv[3], "w"), sort_keys=False)
print("played:", ", ".join(f'{d["kind"]}/{d["metadata"]["name"]}' for d in docs))
PY
grep -q "image: $IMAGE" "$OUT/play.yaml" || { echo "rendered image is not $IMAGE"; exit 1; }

ip netns add "$NETNS"; ip -n "$NETNS" link set lo up
podman volume rm -f pixelserve-models >/dev/null 2>&1 || true
# One host, no PostgreSQL in this play: the job store is SQLite on the played volume.
podman_secret pixelserve-job-store url "sqlite:////srv/pixelserve/models/.jobs.sqlite"

init_exit() { # exit code of this play's init container, from podman's events (it is removed once done)
  podman events --stream=false --since "$T0" --filter event=died --format '{{.Name}} {{.ContainerExitCode}}' \
    | awk '$1 ~ /-seed-models$/ {print $2}' | tail -1
}
play() { # YAML: start the API pod, wait for readiness, print its address
  T0=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  ns podman kube play "$1" > "$OUT/play.log" 2>&1 || { cat "$OUT/play.log"; fail "kube play"; }
  POD=$(podman pod ps --format '{{.Name}}' | grep "^$API" | head -1)
  CTR=$(podman ps --filter "pod=$POD" --format '{{.Names}}' | grep -- '-api$')
  IP=$(podman inspect "$(podman pod inspect "$POD" --format '{{.InfraContainerID}}')" \
        --format '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}')
  URL=http://$IP:8000
  local t0=$SECONDS
  until ns curl -fsS -o /dev/null --max-time 3 "$URL/health/ready" 2>/dev/null; do
    (( SECONDS - t0 > WAIT_S )) && fail "$URL/health/ready not 200 after $WAIT_S s"
    sleep 0.5
  done
  echo "pod $POD, container $CTR, ready at $URL after $(( SECONDS - t0 )) s"
}
code() { ns curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$@"; }
expect() { # WHAT WANT GOT
  [[ $2 == "$3" ]] && echo "ok   $1: $3" || fail "$1: want $2, got $3"
}

step "play 1: no admin Secret (secretKeyRef optional)"
podman secret rm pixelserve-admin >/dev/null 2>&1 || true
play "$OUT/play.yaml"
expect "init container exit code (podman events)" 0 "$(init_exit)"
# Written by the init container (runAsGroup 10001), not copied up by podman from the image (gid 999).
expect "owner of the seeded mnist/1/model.pt" 10001:10001 "$(podman exec "$CTR" stat -c %u:%g /srv/pixelserve/models/mnist/1/model.pt)"
expect "GET /health/live" 200 "$(code "$URL/health/live")"
expect "GET /train without an admin token configured" 403 "$(code "$URL/train")"
ns env LB_URL="$URL" python3 "$ROOT/deploy/smoke.py" || fail "smoke prediction"

step "what podman applied from the pod spec"
podman inspect "$CTR" --format 'user={{.Config.User}} readonly_rootfs={{.HostConfig.ReadonlyRootfs}} memory_limit={{.HostConfig.Memory}} nano_cpus={{.HostConfig.NanoCpus}} cpu_quota={{.HostConfig.CpuQuota}} cpu_period={{.HostConfig.CpuPeriod}} stop_timeout={{.Config.StopTimeout}} cap_drop={{.HostConfig.CapDrop}}'
echo "healthcheck made from the livenessProbe: $(podman inspect "$CTR" --format '{{json .Config.Healthcheck}}')"
echo "uid in the container: $(podman exec "$CTR" id -u)"
expect "uid" 10001 "$(podman exec "$CTR" id -u)"
podman exec "$CTR" sh -c 'touch /srv/pixelserve/probe 2>/dev/null' && fail "the root filesystem is writable"
echo "ok   root filesystem read-only (touch /srv/pixelserve/probe refused)"
podman exec "$CTR" sh -c 'touch /tmp/probe && rm /tmp/probe' || fail "/tmp (emptyDir) not writable"
echo "ok   /tmp writable (emptyDir)"
expect "PIXELSERVE_METRICS_PORT in the container" 9100 "$(podman exec "$CTR" printenv PIXELSERVE_METRICS_PORT)"
echo "RSS of the server (both shipped models, after a prediction): $(podman exec "$CTR" grep VmRSS /proc/1/status | tr -s ' \t' ' ')"
# podman 4.3 turns the livenessProbe into a curl healthcheck on port 0 (the named port `http` is not
# resolved), the image has no curl, and no systemd schedules it here: the probes are tested on a real
# process by tests/test_kubernetes.py instead.
# The costliest request the limits allow: 2 images of 4096x4096 (PIXELSERVE_MAX_REQUEST_PIXELS), RGB.
ns env URL="$URL" python3 - <<'PY' || fail "large upload"
import os, struct, urllib.request, zlib
side = 4096
row = bytes([255, 255, 255]) * (side * 2 // 5) + bytes(3 * side // 5) + bytes([255, 255, 255]) * (side - side * 2 // 5 - side // 5)
raw = b"".join(b"\x00" + row for _ in range(side))
def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")
boundary = "pixelserveplaycheck"
part = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.png\"\r\n"
        "Content-Type: image/png\r\n\r\n").encode() + png + b"\r\n"
body = part * 2 + f"--{boundary}--\r\n".encode()
request = urllib.request.Request(os.environ["URL"] + "/predict/mnist", data=body,
                                 headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
with urllib.request.urlopen(request, timeout=60) as response:
    print(f"POST 2 x {side}x{side} RGB PNG ({len(body)} bytes) -> {response.status}")
PY
echo "after it: $(podman exec "$CTR" grep -E 'VmRSS|VmHWM' /proc/1/status | tr -s ' \t\n' ' ')"

# A stop of ~5.5 s is DRAIN_S alone: podman 4.3 does not run the preStop hook (sleep 5), and it ignores
# terminationGracePeriodSeconds (stop_timeout above is podman's default 10), hence the explicit -t 40.
step "SIGTERM: drain, then graceful exit (podman pod stop -t 40)"
t0=$(date +%s%N)
quiet ns podman pod stop -t 40 "$POD" >/dev/null
dt=$(( ($(date +%s%N) - t0) / 1000000 ))
logs=$(podman logs "$CTR" 2>&1)  # not piped into grep -q: an early exit would SIGPIPE podman (pipefail)
[[ $logs == *"draining for 5.0 s"* ]] || fail "no drain on SIGTERM"
echo "ok   stopped in $dt ms: $(grep -E 'draining|Finished server process' <<<"$logs" | tr '\n' ' ')"
expect "exit code after SIGTERM" 0 "$(podman inspect "$CTR" --format '{{.State.ExitCode}}')"
quiet ns podman kube down "$OUT/play.yaml" >/dev/null

step "play 2: with the admin Secret, on the same volume"
model_pt=$(podman volume inspect pixelserve-models --format '{{.Mountpoint}}')/mnist/1/model.pt
seeded=$(stat -c '%i %Y' "$model_pt")
token="play-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
podman_secret pixelserve-admin token "$token"
podman volume rm -f pixelserve-datasets >/dev/null 2>&1 || true
podman volume create pixelserve-datasets >/dev/null
data=$(podman volume inspect pixelserve-datasets --format '{{.Mountpoint}}')
[[ -d $DATASETS/mnist ]] && cp -r "$DATASETS/mnist" "$data/" && chown -R 10001:10001 "$data"
play "$OUT/play-again.yaml"
expect "init container exit code (podman events)" 0 "$(init_exit)"
expect "mnist/1/model.pt after the second init container (inode mtime)" "$seeded" "$(stat -c '%i %Y' "$model_pt")"
expect "GET /train without a token" 401 "$(code "$URL/train")"
expect "GET /train with the Secret's token" 200 "$(code -H "Authorization: Bearer $token" "$URL/train")"
ns env LB_URL="$URL" python3 "$ROOT/deploy/smoke.py" || fail "smoke prediction"

step "a training job: API -> job store -> worker pod -> shared volume -> every replica serves it"
if [[ -d $DATASETS/mnist ]]; then
  # Small enough for a CI machine, good enough to pass the worker's publication floor (80 % by default).
  body='{"model": "mnist", "architecture": "mnist_cnn", "dataset": "mnist", "epochs": 1, "max_samples": 5000}'
  answer=$(ns curl -sS -H "Authorization: Bearer $token" -H 'Content-Type: application/json' -d "$body" "$URL/train")
  job=$(python3 -c 'import json, sys; print(json.loads(sys.argv[1])["id"])' "$answer") || fail "POST /train: $answer"
  t0=$SECONDS
  while :; do
    status=$(ns curl -fsS -H "Authorization: Bearer $token" "$URL/train/$job")
    state=$(python3 -c 'import json, sys; print(json.loads(sys.argv[1])["status"])' "$status")
    [[ $state == succeeded ]] && break
    [[ $state == queued || $state == running ]] || fail "job $job ended $state: $status"
    (( SECONDS - t0 > 300 )) && fail "job $job still $state after 300 s"
    sleep 2
  done
  version=$(python3 -c 'import json, sys; print(json.loads(sys.argv[1])["version"])' "$status")
  echo "ok   job $job succeeded in $(( SECONDS - t0 )) s: mnist version $version"
  until [[ $(ns curl -fsS "$URL/health/ready") == *"\"mnist\":\"$version\""* ]]; do
    (( SECONDS - t0 > 330 )) && fail "the API did not load mnist $version"
    sleep 0.5
  done
  echo "ok   the API serves mnist $version (hot reload from the shared volume)"
else
  echo "SKIPPED: no $DATASETS/mnist, no training job"
fi

step "podman kube down"
quiet ns podman kube down "$OUT/play-again.yaml"
left=$(podman pod ps -q --filter "name=pixelserve-" | wc -l)
((left == 0)) || fail "$left pod(s) left after kube down"
echo "play check passed"
