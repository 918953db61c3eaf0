#!/bin/sh
# Regenerates the test certificates of mesh/tests/data/edge: a CA (edge-ca.pem, what curl trusts)
# and a certificate for web.example.com and *.web.example.com signed by it, written as the
# kubernetes.io/tls Secret the Gateway's credentialName names (edge/secret.yaml). Valid for 100 years.
set -eu
cd "$(dirname "$0")"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 36500 \
  -subj "/CN=remora edge test CA" -keyout "$tmp/ca.key" -out edge-ca.pem \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=web.example.com" \
  -keyout "$tmp/tls.key" -out "$tmp/tls.csr" 2>/dev/null
printf 'subjectAltName=DNS:web.example.com,DNS:*.web.example.com\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' > "$tmp/ext"
openssl x509 -req -in "$tmp/tls.csr" -CA edge-ca.pem -CAkey "$tmp/ca.key" -set_serial 0x$(openssl rand -hex 8) \
  -days 36500 -extfile "$tmp/ext" -out "$tmp/tls.crt" 2>/dev/null
openssl pkcs8 -topk8 -nocrypt -in "$tmp/tls.key" -out "$tmp/tls.pk8"
cat > edge/secret.yaml <<YAML
# Made by ../make-edge-cert.sh: the certificate of the HTTPS server of gateway.yaml.
apiVersion: v1
kind: Secret
metadata:
  name: web-cert
  namespace: istio-system
type: kubernetes.io/tls
data:
  tls.crt: $(base64 -w0 "$tmp/tls.crt")
  tls.key: $(base64 -w0 "$tmp/tls.pk8")
YAML
