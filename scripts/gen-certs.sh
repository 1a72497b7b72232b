#!/usr/bin/env bash
# Certificates for a nines cluster, made with openssl: one CA, per member a
# client-port and a peer certificate, and one client certificate. What
# scripts/cluster.sh up --tls, the benchmarks and the deploy files use.
#
#   scripts/gen-certs.sh DIR [NAME[=SAN,SAN...] ...]
#
#   scripts/gen-certs.sh .tls
#       one member certificate pair for 127.0.0.1 and localhost (local clusters)
#   scripts/gen-certs.sh deploy/tls nines1=DNS:nines1 nines2=DNS:nines2 nines3=DNS:nines3
#       one pair per member, each for its own host name
#
# Under DIR:
#   ca.crt ca.key             the CA (ca.key signs; keep it off the members:
#                             CA_KEY_DIR puts ca.key and its serial elsewhere)
#   NAME.crt NAME.key         member NAME's client port, CN nines-member; server
#                             and client usage: a member presents it when it
#                             forwards a call to the leader's client port
#   NAME-peer.crt NAME-peer.key
#                             member NAME's peer port, CN nines-peer (the CN the
#                             members admit: --peer-cert-allowed-cn nines-peer)
#   client.crt client.key     a client (nines --cert, etcdctl --cert), CN root
#
# Files already there are kept (running it again adds missing members; delete
# a pair and run it again to renew it; members re-read changed files). Every
# certificate gets DNS:localhost and IP:127.0.0.1 besides the SANs given, so
# tools on the member's own host reach it. DAYS (default 365) sets the
# leaves' validity, CA_DAYS (3650) the CA's; KEY_OWNER, when set, is chown'ed
# onto the keys (a container's service user, run as root).
set -euo pipefail

usage() { sed -n '2,27p' "$0" >&2; exit 2; }
[ $# -ge 1 ] || usage
case "$1" in -h | --help) usage ;; esac
dir=$1
shift
members=("$@")
[ ${#members[@]} -gt 0 ] || members=(member)
DAYS=${DAYS:-365}
CA_DAYS=${CA_DAYS:-3650}
command -v openssl >/dev/null || { echo "$0 needs the openssl CLI (apt-get install openssl)" >&2; exit 1; }

mkdir -p "$dir" "${CA_KEY_DIR:-$dir}"
ca_key=$(realpath "${CA_KEY_DIR:-$dir}")/ca.key
cd "$dir"
umask 077

if [ ! -f ca.crt ]; then
  openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$ca_key" -out ca.crt -days "$CA_DAYS" -subj "/CN=nines CA" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
  echo "made CA $dir/ca.crt"
fi

# leaf NAME CN SANS: NAME.crt and NAME.key signed by the CA, unless present.
leaf() {
  local name=$1 cn=$2 sans=$3
  [ -f "$name.crt" ] && [ -f "$name.key" ] && return
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$name.key" -out "$name.csr" -subj "/CN=$cn" 2>/dev/null
  printf '%s\n' "subjectAltName=$sans" "extendedKeyUsage=serverAuth,clientAuth" \
    "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" >"$name.ext"
  openssl x509 -req -in "$name.csr" -CA ca.crt -CAkey "$ca_key" \
    -CAserial "${ca_key%.key}.srl" -CAcreateserial \
    -days "$DAYS" -extfile "$name.ext" -out "$name.crt" 2>/dev/null
  rm -f "$name.csr" "$name.ext"
  echo "made $dir/$name.crt (CN $cn, $sans)"
}

local_sans="DNS:localhost,IP:127.0.0.1"
for spec in "${members[@]}"; do
  name=${spec%%=*} sans=$local_sans
  [[ $spec == *=?* ]] && sans="${spec#*=},$local_sans"
  [[ $name =~ ^[A-Za-z0-9._-]+$ ]] || { echo "bad member name in $spec (e.g. nines1=DNS:nines1)" >&2; exit 2; }
  leaf "$name" nines-member "$sans"
  leaf "$name-peer" nines-peer "$sans"
done
leaf client root "$local_sans"

chmod 644 ./*.crt
# Not the CA key: only the members' and the client's.
if [ -n "${KEY_OWNER:-}" ]; then
  for key in ./*.key; do [ "$(realpath "$key")" = "$ca_key" ] || chown "$KEY_OWNER" "$key"; done
fi
