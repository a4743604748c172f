#!/usr/bin/env bash
# Makes the lottery's certificates for mutual TLS, idempotently:
#
#   CERTS_DIR/ca.pem, ca.key              the lottery CA (self-signed, 10 years)
#   CERTS_DIR/server.pem, server.key      the server: subjectAltName DNS:server,
#                                         DNS:localhost, IP:127.0.0.1, IP:::1; serverAuth
#   CERTS_DIR/agency-K.pem, agency-K.key  agency K = 1..CERTS_AGENCIES: CN and
#                                         subjectAltName DNS:agency-K; clientAuth
#
#   scripts/make-certs.sh [--brief] [--force] [--help]     (make certs runs it)
#
# Keys are ECDSA P-256, PKCS#8 PEM; certificates X.509 v3, ECDSA with SHA-256, the
# leaves valid 825 days. The CA has exactly basicConstraints (critical, CA:TRUE),
# keyUsage (critical, keyCertSign, cRLSign) and subjectKeyIdentifier; each leaf exactly
# basicConstraints (critical, CA:FALSE), keyUsage (critical, digitalSignature),
# extendedKeyUsage, subjectAltName and authorityKeyIdentifier.
#
# A file that is valid is left as it is (same bytes, same modification time). A key
# that is missing, unreadable or not an ECDSA P-256 PKCS#8 key is made anew; a
# certificate that is missing, unreadable, not signed by this CA, expired or expiring
# within 30 days, not for its key, or with other names or extensions than the above
# is issued again (for the key beside it). A CA that is missing, broken or expiring
# (either file) is made anew, and then every key and certificate with it. One line per
# file says what happened (--brief: only of the files made or changed, or one line
# when every file was kept; the make targets that start the lottery run it so).
# Leaves of agencies above CERTS_AGENCIES are left alone.
# --force makes everything anew (a new CA): every certificate issued before stops
# being trusted once the programs use the new ca.pem.
#
# File modes: CERTS_DIR is 0700, so on the host only its owner reaches what is in
# it; ca.key is 0600 and never leaves it. The leaf keys are 0644 inside that
# directory: a container bind-mounts the one file it needs, and its user `loteria`
# (uid 10001), which does not own the file on the host, must be able to read it (a
# 0600 key is unreadable there; the directory that guards it on the host is not part
# of the mount). Certificates are 0644.
#
# Environment: CERTS_DIR (default certs/ in the repository; a relative path is taken
# from the current directory), CERTS_AGENCIES (default 5; 0..1000).
# Needs OpenSSL 3 (`openssl`). Exit codes: 0 done, 1 failed, 2 bad arguments.
set -Eeuo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CA_DAYS=3650
LEAF_DAYS=825
# Reissue what expires within this many seconds (30 days).
RENEW_BEFORE=$((30 * 24 * 3600))
MAX_AGENCIES=1000

usage() { sed -n '2,/^set -E/{/^set -E/d;s/^# \{0,1\}//;p}' "$0"; }

force=0 brief=0
for arg in "$@"; do
    case $arg in
        -h | --help) usage; exit 0 ;;
        --force) force=1 ;;
        --brief) brief=1 ;;
        *) echo "make-certs: unknown argument: $arg (try --help)" >&2; exit 2 ;;
    esac
done

agencies=${CERTS_AGENCIES:-5}
if ! [[ $agencies =~ ^[0-9]{1,4}$ ]] || [ $((10#$agencies)) -gt $MAX_AGENCIES ]; then
    echo "make-certs: CERTS_AGENCIES must be an integer in 0..$MAX_AGENCIES, got '$agencies'" >&2
    exit 2
fi
agencies=$((10#$agencies))
if [ -n "${CERTS_DIR+set}" ]; then
    dir=$CERTS_DIR
    [ -n "$dir" ] || { echo "make-certs: CERTS_DIR is empty" >&2; exit 2; }
else
    cd "$ROOT"
    dir=certs
fi

if ! command -v openssl >/dev/null 2>&1; then
    echo "make-certs: openssl is missing (scripts/ensure-tools.sh openssl installs it)" >&2
    exit 1
fi
version=$(openssl version)
if ! [[ $version =~ ^OpenSSL\ ([3-9]|[1-9][0-9])\. ]]; then
    echo "make-certs: needs OpenSSL 3 or later, this is: $version" >&2
    exit 1
fi

umask 077
# One line per file; `changed` counts the files made or changed.
changed=0
say() { printf '%-24s %s\n' "$1" "$2"; changed=$((changed + 1)); }
kept() { [ "$brief" = 1 ] || printf '%-24s %s\n' "$1" "$2"; }
if [ ! -d "$dir" ]; then
    mkdir -p "$dir"
    say "$dir/" "created (mode 0700)"
fi
if [ "$(stat -c %a "$dir")" != 700 ]; then
    was=$(stat -c %a "$dir")
    chmod 0700 "$dir"
    say "$dir/" "mode set to 0700 (was 0$was)"
fi

# One run at a time on a directory (two at once could each make a CA): a lock on
# the directory itself, so that it holds nothing but the files.
if command -v flock >/dev/null 2>&1; then
    exec 9<"$dir"
    flock 9
fi
scratch=$(mktemp -d "$dir/.make-certs.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
# What openssl says while making files, shown if that fails.
trap 'echo "make-certs: failed (line $LINENO: $BASH_COMMAND)" >&2; cat "$scratch/openssl.log" >&2 2>/dev/null || true' ERR


# ----- checks: each sets `problem` (empty: the file is good) -----

# An ECDSA P-256 private key in unencrypted PKCS#8 PEM; sets `public` (its public key).
check_key() {
    local key=$1 text
    problem="" public=""
    if [ ! -e "$key" ]; then problem="missing"; return; fi
    if [ ! -f "$key" ] || [ ! -r "$key" ]; then problem="unreadable"; return; fi
    if [ "$(head -n 1 "$key" 2>/dev/null)" != "-----BEGIN PRIVATE KEY-----" ] \
        || ! text=$(openssl pkey -in "$key" -pubout -text 2>/dev/null); then
        problem="not a PKCS#8 PEM private key"
        return
    fi
    grep -q '^ASN1 OID: prime256v1$' <<<"$text" || problem="not an ECDSA P-256 key"
    public=$(sed -n '/^-----BEGIN PUBLIC KEY-----$/,/^-----END PUBLIC KEY-----$/p' <<<"$text")
}

# What is checked of a certificate besides its signature and dates: version, key,
# signature algorithm, subject and every extension (names, criticality, values; the
# key identifiers' values vary and stand as <keyid>), one per line.
profile() {
    openssl x509 -in "$1" -noout -text -nameopt RFC2253 2>/dev/null | awk '
        function trim(s) { sub(/^ +/, "", s); sub(/ +$/, "", s); return s }
        /^        Version: / { print "version " $2; next }
        /^        Subject: / { sub(/^ *Subject: /, ""); print "subject " $0; next }
        /^ +Public Key Algorithm: / { print "key " trim($0); next }
        /^ +ASN1 OID: / { print "curve " $3; next }
        /^    Signature Algorithm: / { ext = 0; print "signature " trim($0); next }
        /^        X509v3 extensions:/ { ext = 1; next }
        ext && /^            [^ ]/ { name = trim($0); next }
        ext && /^                / {
            value = trim($0)
            if (name ~ /Key Identifier/) value = "<keyid>"
            gsub(/IP Address:0:0:0:0:0:0:0:1/, "IP Address:::1", value)
            print name " = " value
        }'
}

expected_profile() { # subject, then extension lines
    local subject=$1
    shift
    printf '%s\n' "version 3" "subject CN=$subject" "key Public Key Algorithm: id-ecPublicKey" \
        "curve prime256v1" "$@" "signature Signature Algorithm: ecdsa-with-SHA256"
}

ca_profile() {
    expected_profile "Loteria Nacional CA" \
        "X509v3 Basic Constraints: critical = CA:TRUE" \
        "X509v3 Key Usage: critical = Certificate Sign, CRL Sign" \
        "X509v3 Subject Key Identifier: = <keyid>"
}

leaf_profile() { # name, EKU as printed, SAN as printed
    expected_profile "$1" \
        "X509v3 Basic Constraints: critical = CA:FALSE" \
        "X509v3 Key Usage: critical = Digital Signature" \
        "X509v3 Extended Key Usage: = $2" \
        "X509v3 Subject Alternative Name: = $3" \
        "X509v3 Authority Key Identifier: = <keyid>"
}

# A certificate verified against `ca` (x509-strict, for `purpose`), valid for more
# than 30 days, with the expected profile and the public key `public`; sets `until`
# (its notAfter).
check_cert() { # cert, ca, purpose, profile, public key
    local cert=$1 ca=$2 purpose=$3 dates verdict
    problem="" until=""
    if [ ! -e "$cert" ]; then problem="missing"; return; fi
    if [ ! -f "$cert" ] || [ ! -r "$cert" ]; then problem="unreadable"; return; fi
    local expiring=0
    dates=$(openssl x509 -in "$cert" -noout -pubkey -enddate -checkend "$RENEW_BEFORE" \
        2>/dev/null) || expiring=1
    until=$(sed -n 's/^notAfter=//p' <<<"$dates")
    if [ -z "$until" ]; then problem="not a PEM certificate"; return; fi
    if ! verdict=$(openssl verify -no-CApath -no-CAstore -x509_strict -purpose "$purpose" \
        -CAfile "$ca" "$cert" 2>&1); then
        verdict=$(grep -m 1 -o 'error [0-9]* at [0-9]* depth lookup: .*' <<<"$verdict" \
            | sed 's/^error [0-9]* at [0-9]* depth lookup: //') || true
        problem="does not verify against $(basename "$ca"): ${verdict:-openssl verify failed}"
        return
    fi
    if [ "$expiring" != 0 ]; then problem="expires within 30 days: $until"; return; fi
    local actual
    actual=$(profile "$cert") || true
    if [ "$actual" != "$4" ]; then
        local has wants
        has=$(grep -Fxv -f <(printf '%s\n' "$4") <<<"$actual" | head -n 1) || true
        wants=$(grep -Fxv -f <(printf '%s\n' "$actual") <<<"$4" | head -n 1) || true
        problem="wrong subject or extensions:"
        [ -z "$has" ] || problem+=" has \"$has\""
        [ -z "$has" ] || [ -z "$wants" ] || problem+=","
        [ -z "$wants" ] || problem+=" lacks \"$wants\""
        return
    fi
    if [ "$(sed -n '/^-----BEGIN PUBLIC KEY-----$/,/^-----END PUBLIC KEY-----$/p' <<<"$dates")" \
        != "$5" ]; then
        problem="not the certificate of the key beside it"
    fi
}

# ----- making files: into the scratch directory, then moved into place -----

new_key() { # path, mode
    local tmp=$scratch/key
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$tmp" 2>>"$scratch/openssl.log"
    chmod "$2" "$tmp"
    mv -fT "$tmp" "$1"
}

serial() { echo "0x$(openssl rand -hex 16)"; }

new_ca() {
    cat >"$scratch/ca.cnf" <<'EOF'
[req]
distinguished_name = dn
prompt = no
x509_extensions = ca
[dn]
CN = Loteria Nacional CA
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = none
EOF
    openssl req -new -x509 -config "$scratch/ca.cnf" -key "$dir/ca.key" -sha256 \
        -days "$CA_DAYS" -set_serial "$(serial)" -out "$scratch/cert" 2>>"$scratch/openssl.log"
    chmod 0644 "$scratch/cert"
    mv -fT "$scratch/cert" "$dir/ca.pem"
}


new_leaf() { # name, extendedKeyUsage, subjectAltName
    local name=$1
    cat >"$scratch/leaf.cnf" <<EOF
[req]
distinguished_name = dn
prompt = no
[dn]
CN = $name
[leaf]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = $2
subjectAltName = $3
authorityKeyIdentifier = keyid:always
subjectKeyIdentifier = none
EOF
    openssl req -new -config "$scratch/leaf.cnf" -key "$dir/$name.key" -out "$scratch/csr" \
        2>>"$scratch/openssl.log"
    openssl x509 -req -in "$scratch/csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" \
        -set_serial "$(serial)" -days "$LEAF_DAYS" -sha256 -extfile "$scratch/leaf.cnf" \
        -extensions leaf -out "$scratch/cert" 2>>"$scratch/openssl.log"
    chmod 0644 "$scratch/cert"
    mv -fT "$scratch/cert" "$dir/$name.pem"
}

# A kept file whose mode is not `mode` gets it (chmod changes neither bytes nor mtime).
keep() { # path, mode, what to say
    if [ "$(stat -c %a "$1")" != "${2#0}" ]; then
        say "$1" "$3; mode set to $2 (was 0$(stat -c %a "$1"))"
        chmod "$2" "$1"
    else
        kept "$1" "$3"
    fi
}

until_date() { openssl x509 -in "$1" -noout -enddate | cut -d= -f2; }

# ----- the CA -----

ca_reason=""
if [ "$force" = 1 ]; then
    ca_reason="--force"
else
    check_key "$dir/ca.key"
    if [ -n "$problem" ]; then
        ca_reason="ca.key: $problem"
    else
        check_cert "$dir/ca.pem" "$dir/ca.pem" any "$(ca_profile)" "$public"
        [ -z "$problem" ] || ca_reason="ca.pem: $problem"
    fi
fi
renew_all=""
if [ -n "$ca_reason" ]; then
    existed=0
    if [ -e "$dir/ca.key" ] || [ -e "$dir/ca.pem" ]; then existed=1; fi
    new_key "$dir/ca.key" 0600
    new_ca
    if [ "$existed" = 1 ]; then
        say "$dir/ca.key" "made anew: a new CA ($ca_reason); every key and certificate is made anew"
        say "$dir/ca.pem" "issued anew, valid until $(until_date "$dir/ca.pem")"
        renew_all="a new CA"
    else
        say "$dir/ca.key" "created"
        say "$dir/ca.pem" "issued, valid until $(until_date "$dir/ca.pem")"
        renew_all="first issue"
    fi
else
    keep "$dir/ca.key" 0600 "kept"
    keep "$dir/ca.pem" 0644 "kept, valid until $until"
fi

# ----- the leaves -----

leaf() { # name, purpose for openssl verify, EKU (config), EKU (printed), SAN (config), SAN (printed)
    local name=$1 purpose=$2 key=$dir/$1.key cert=$dir/$1.pem
    if [ -n "$renew_all" ]; then
        problem=$renew_all
    else
        check_key "$key"
    fi
    if [ -n "$problem" ]; then
        if [ -e "$key" ]; then
            say "$key" "made anew ($problem)"
        else
            say "$key" "created"
        fi
        new_key "$key" 0644
        problem="a new key"
    else
        keep "$key" 0644 "kept"
        check_cert "$cert" "$dir/ca.pem" "$purpose" "$(leaf_profile "$name" "$4" "$6")" "$public"
    fi
    if [ -z "$problem" ]; then
        keep "$cert" 0644 "kept, valid until $until"
        return
    fi
    local existed=0
    if [ -e "$cert" ]; then existed=1; fi
    new_leaf "$name" "$3" "$5"
    if [ "$existed" = 1 ]; then
        say "$cert" "issued anew ($problem), valid until $(until_date "$cert")"
    else
        say "$cert" "issued, valid until $(until_date "$cert")"
    fi
}

leaf server sslserver serverAuth "TLS Web Server Authentication" \
    "DNS:server, DNS:localhost, IP:127.0.0.1, IP:::1" \
    "DNS:server, DNS:localhost, IP Address:127.0.0.1, IP Address:::1"
for k in $(seq 1 "$agencies"); do
    leaf "agency-$k" sslclient clientAuth "TLS Web Client Authentication" \
        "DNS:agency-$k" "DNS:agency-$k"
done
if [ "$brief" = 1 ] && [ "$changed" = 0 ]; then
    case $agencies in
        0) which="no agency" ;;
        1) which="agency 1" ;;
        *) which="agencies 1-$agencies" ;;
    esac
    echo "$dir/: every key and certificate kept (CA, server, $which)"
fi
